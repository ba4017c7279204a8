"""FixRes fine-tuning as the reference does it (`remove_aug`, `fix_layer_num`,
`train_last_step_num`): the documented command runs, the learning rate continues the tail of the
training run's schedule, and the frozen blocks (weights and batch-norm statistics) do not move."""

import json
import pathlib
import shlex

import keras
import numpy as np
import pytest
from absl import flags

import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "imagenet_l2_student.flags"
# The tiny stand-ins for what the documented command and the recipe give a TPU-sized run.
TINY = {"model": "efficientnet-b0", "width_coefficient": "0.1", "depth_coefficient": "0.1",
        "small_image": None, "image_size": "16", "strategy": "cpu", "mixed_precision": "none",
        "batch_size": "4", "normalization": "manifest", "num_shards": "2"}
SOURCE_STEPS, FINETUNE_STEPS, FROZEN_BLOCKS = 12, 3, 2
PEAK, DECAY_FACTOR, DECAY_EPOCHS = 0.064, 0.5, 0.5  # per 256 images; decays every 3 steps here


def run(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


def documented_finetune_command():
  """The finetune command of the recipe's header, as a list of arguments after `main.py`."""
  lines, taking = [], False
  for line in RECIPE.read_text().splitlines():
    text = line.lstrip("#").strip()
    if "--mode=finetune" in text:
      taking = True
    if taking:
      if not text.startswith(("python", "--")):
        break
      lines.append(text.rstrip("\\"))
      if not line.rstrip().endswith("\\"):
        break
  args = shlex.split(" ".join(lines))
  assert args[:2] == ["python", "main.py"], args
  return args[2:]


def _with(args, **values):
  """`args` with each named flag set to a new value (None: a bare boolean), others kept."""
  kept = [a for a in args if a.lstrip("-").split("=", 1)[0] not in values]
  return kept + [f"--{k}" if v is None else f"--{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  labels = np.arange(24) % 3
  images = rng.integers(0, 60, (24, 16, 16, 3)).astype(np.uint8)
  images[np.arange(24), :, :, labels] += 180
  np.savez(root / "labeled.npz", images=images, labels=labels)
  run("--mode=convert", "--source=npz", f"--input={root / 'labeled.npz'}",
      f"--output={root / 'labeled'}", "--split=train", "--num_shards=2")
  return root


def _source_schedule(step, steps_per_epoch, batch_size):
  """The reference schedule restated (no warm-up): peak * factor ** floor(step / decay steps)."""
  peak = PEAK * batch_size / 256
  return peak * DECAY_FACTOR ** np.floor(step / (steps_per_epoch * DECAY_EPOCHS))


def test_documented_finetune_command_continues_the_schedule_and_freezes_blocks(data, tmp_path):
  labeled = str(data / "labeled")
  source = tmp_path / "source"
  common = _with([], **TINY, labeled_data=labeled, eval_data=labeled, seed="0")
  run("--mode=train", *common, f"--workdir={source}",
      f"--train_steps={SOURCE_STEPS}", "--warmup_epochs=0", f"--base_learning_rate={PEAK}",
      f"--lr_decay_factor={DECAY_FACTOR}", f"--lr_decay_epochs={DECAY_EPOCHS}",
      "--randaugment_layers=0", "--batch_norm_recalibration=never")

  fixres = tmp_path / "fixres"
  documented = documented_finetune_command()
  assert "--mode=finetune" in documented and "--flagfile=recipes/imagenet_l2_student.flags" in (
      documented)
  # The documented command as written, with only what a tiny CPU run needs replaced: the flag
  # file from the repository root, the paths, sizes and the step count.
  command = _with([a.replace("recipes/", f"{ROOT}/recipes/") for a in documented], **TINY,
                  labeled_data=labeled, eval_data=labeled, init_checkpoint=str(source),
                  workdir=str(fixres), train_steps=str(FINETUNE_STEPS),
                  freeze_blocks=str(FROZEN_BLOCKS), seed="0")
  run(*command)

  written = json.loads((fixres / "train_config.json").read_text())
  config = written["config"]
  # Eval preprocessing; dropout and stochastic depth the recipe's, as the reference keeps them
  # in the layers it trains; the source's schedule (the recipe's peak rate is not used).
  recipe = (ROOT / "recipes" / "imagenet_l2_student.flags").read_text().split()
  assert config["augment"] is False and config["randaugment_layers"] == 0
  assert f"--dropout_rate={config['dropout_rate']}" in recipe
  assert f"--survival_prob={config['survival_prob']}" in recipe
  assert config["base_learning_rate"] == PEAK and config["warmup_epochs"] == 0
  assert config["schedule_steps"] == SOURCE_STEPS and written["total_steps"] == FINETUNE_STEPS

  history = json.loads((fixres / "history.json").read_text())
  steps_per_epoch = written["steps_per_epoch"]
  # Logged at the end of each Keras epoch: the rate at the step the optimizer has reached,
  # i.e. the source schedule at (its length - fine-tune length + that step).
  steps = np.array(history["history"]["step"])
  assert steps[-1] == FINETUNE_STEPS
  expected = _source_schedule(SOURCE_STEPS - FINETUNE_STEPS + steps, steps_per_epoch, 4)
  np.testing.assert_allclose(history["history"]["learning_rate"], expected, rtol=1e-6)
  # Far below the peak that a fresh schedule (or the recipe's rate) would start the tail at.
  assert max(expected) < PEAK * 4 / 256 * DECAY_FACTOR ** 2

  before = keras.models.load_model(source / "model.keras", compile=False)
  after = keras.models.load_model(fixres / "model.keras", compile=False)
  frozen = ("stem_",) + tuple(b.name for b in before.block_plan[:FROZEN_BLOCKS])
  moved = []
  for layer in before.layers:
    if not layer.weights:
      continue
    old, new = layer.get_weights(), after.get_layer(layer.name).get_weights()
    if layer.name.startswith(frozen):
      # Frozen: weights and batch-norm moving statistics exactly as the source saved them.
      for a, b in zip(old, new):
        np.testing.assert_array_equal(a, b, err_msg=layer.name)
    elif any(not np.array_equal(a, b) for a, b in zip(old, new)):
      moved.append(layer.name)
  assert "predictions" in moved and "top_conv" in moved  # the rest did train


def test_finetune_needs_the_run_it_continues(data, tmp_path):
  with pytest.raises(SystemExit, match="finetune needs --init_checkpoint"):
    run("--mode=finetune", *_with([], **TINY, labeled_data=str(data / "labeled"),
                                  eval_data=str(data / "labeled")),
        f"--workdir={tmp_path}", "--train_steps=2")
