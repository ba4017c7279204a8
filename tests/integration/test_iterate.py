"""iterate (noisy_student/phases/iterate.py) as one command for a chain whose rounds differ in
model, image size and unlabeled ratio, with a FixRes fine-tune in the last round: checked from
what the run wrote (each round's saved model, its recorded ratio, the round's evaluation at the
fine-tune size recomputed from the saved model), and its --dry_run plan against the run."""

import json
import pathlib

import keras
import numpy as np
import pytest
from absl import flags

import main
from data import pipeline
from noisy_student import checkpoints
from noisy_student import filter_balance
from noisy_student.phases import filter_phase

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--model=efficientnet-b0", "--width_coefficient=0.1", "--depth_coefficient=0.1",
        "--small_image", "--image_size=16", "--batch_size=8", "--strategy=cpu",
        "--train_steps=12", "--student_train_steps=4", "--warmup_epochs=0", "--seed=3",
        "--images_per_class=20", "--confidence_threshold=0", "--inference_batch_size=32"]
CHAIN = ["--iterations=2", "--student_models=efficientnet-b0,efficientnet-b1",
         "--student_image_sizes=16,24", "--unlabeled_batch_ratios=1,2",
         "--finetune_image_size=none,32", "--finetune_steps=3", "--freeze_blocks=1"]


def run(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


@pytest.fixture(scope="module")
def chain(tmp_path_factory, bright_channel_shards):
  root = tmp_path_factory.mktemp("chain")
  data = [f"--labeled_data={bright_channel_shards(root, 'labeled', 48, 0, 2)}",
          f"--unlabeled_data={bright_channel_shards(root, 'unlabeled', 60, 1, 2, True)}",
          f"--eval_data={bright_channel_shards(root, 'test', 30, 2, 1)}"]
  workdir = root / "run"
  args = ["--mode=iterate", *TINY, *data, *CHAIN, f"--workdir={workdir}"]
  run(*args, "--dry_run", f"--output={root / 'plan.json'}")
  wrote_before_the_run = workdir.exists()
  run(*args)
  return {"root": root, "workdir": workdir, "test": root / "test",
          "plan": json.loads((root / "plan.json").read_text()),
          "wrote_before_the_run": wrote_before_the_run}


def _saved(directory):
  model = keras.models.load_model(directory / "model.keras", compile=False)
  return model, json.loads((directory / "train_config.json").read_text())


def test_each_round_trains_its_own_model_size_and_ratio(chain):
  rounds = [chain["workdir"] / "iter_1" / "train", chain["workdir"] / "iter_2" / "train"]
  expected = [("efficientnet-b0", 16, 1.0), ("efficientnet-b1", 24, 2.0)]
  for directory, (variant, size, ratio) in zip(rounds, expected):
    model, run_config = _saved(directory)
    assert model.efficientnet_config["variant"] == variant
    assert run_config["image_size"] == size
    assert run_config["config"]["unlabeled_batch_ratio"] == ratio
    assert run_config["pseudo_labeled_data"] == str(directory.parent / "filter")
  # Round 1 has no fine-tune; round 2's continues its student's schedule at 32 px.
  assert not (chain["workdir"] / "iter_1" / "finetune").exists()
  tuned, tune_config = _saved(chain["workdir"] / "iter_2" / "finetune")
  assert tuned.efficientnet_config["variant"] == "efficientnet-b1"
  assert tune_config["image_size"] == 32
  assert tune_config["total_steps"] == 3 and tune_config["config"]["freeze_blocks"] == 1
  assert tune_config["config"]["schedule_steps"] == _saved(rounds[1])[1]["total_steps"]
  assert tune_config["init_checkpoint"] == str(rounds[1])


def test_the_last_round_is_evaluated_at_the_fine_tune_size_and_hands_that_model_on(chain):
  workdir = chain["workdir"]
  tuned = keras.models.load_model(workdir / "iter_2" / "finetune" / "model.keras", compile=False)
  prep = checkpoints.eval_preprocessing(str(workdir / "iter_2" / "finetune"), tuned)
  assert prep.image_size == 32
  # The oracle: the saved fine-tuned model run here on the test set at 32 px, argmax by NumPy.
  hits = total = 0
  for images, labels in pipeline.eval_dataset(str(chain["test"]), prep, batch_size=16):
    logits = keras.ops.convert_to_numpy(tuned(images, training=False))
    hits += int((logits.argmax(axis=1) == labels.numpy()).sum())
    total += len(labels)
  metrics = json.loads((workdir / "iter_2" / "eval" / "metrics.json").read_text())
  assert metrics["num_examples"] == total
  assert metrics["top1"] == pytest.approx(hits / total, abs=1e-9)
  summary = json.loads((workdir / "summary.json").read_text())
  last = summary["rounds"][2]
  assert (last["model"], last["image_size"], last["unlabeled_batch_ratio"]) == (
      "efficientnet-b1", 24, 2.0)
  assert (last["finetune_image_size"], last["eval_image_size"], last["top1"]) == (
      32, 32, metrics["top1"])
  # The change in points over its own teacher (round 1), and over round 0 in its column.
  header, *rows = summary["table"]
  cells = rows[2].split()
  assert float(cells[-2]) == pytest.approx(100 * (last["top1"] - summary["rounds"][1]["top1"]),
                                           abs=0.006)
  assert float(cells[-1]) == pytest.approx(100 * (last["top1"] - summary["rounds"][0]["top1"]),
                                           abs=0.006)


def test_the_dry_run_wrote_nothing_and_planned_what_the_run_did(chain):
  assert not chain["wrote_before_the_run"]
  plan, workdir = chain["plan"], chain["workdir"]
  phases = {(r["round"], name): value for r in plan["rounds"] for name, value in
            r["phases"].items()}
  for (k, phase), directory in {(0, "train"): "iter_0/train", (1, "train"): "iter_1/train",
                                (2, "train"): "iter_2/train",
                                (2, "finetune"): "iter_2/finetune"}.items():
    written = json.loads((workdir / directory / "train_config.json").read_text())
    planned = phases[(k, phase)]
    assert planned["total_steps"] == written["total_steps"], directory
    assert planned["image_size"] == written["image_size"], directory
    assert planned["steps_per_epoch"] == written["steps_per_epoch"], directory
  # The teacher each round predicts with sees images at its own size: round 2's is round 1's
  # student (16 px); round 2 is evaluated where its fine-tune trained.
  assert phases[(2, "predict")]["image_size"] == 16 and phases[(2, "eval")]["image_size"] == 32
  assert phases[(1, "predict")]["storage"]["records"] == 60
  # Written prediction shards against the planned bytes: the same record size.
  written_bytes = sum(p.stat().st_size for p in (workdir / "iter_1" / "predict").iterdir()
                      if not p.name.endswith(".json"))
  storage = phases[(1, "predict")]["storage"]
  assert storage["bytes"] == storage["records"] * storage["bytes_per_record"]
  # TFRecord framing adds 16 bytes a record; the plan sizes every record by the first key, and
  # keys differ by a few characters.
  assert written_bytes == pytest.approx(storage["records"] * (storage["bytes_per_record"] + 16),
                                        rel=0.01)


def test_a_dry_run_after_the_predictions_counts_what_the_filter_kept(chain):
  """Once a round's filter has run, the plan reports its kept and duplicated counts (here from
  its stats; stats.json is the oracle)."""
  plan = chain["root"] / "again.json"
  run("--mode=iterate", *TINY, *CHAIN, f"--workdir={chain['workdir']}",
      f"--labeled_data={chain['root'] / 'labeled'}",
      f"--unlabeled_data={chain['root'] / 'unlabeled'}", f"--eval_data={chain['test']}",
      "--dry_run", f"--output={plan}")
  planned = json.loads(plan.read_text())["rounds"][1]["phases"]
  stats = json.loads((chain["workdir"] / "iter_1" / "filter" / "stats.json").read_text())
  assert planned["filter"]["with_copies"] == stats["totals"]["with_copies"]
  assert planned["filter"]["kept_unique"] == stats["totals"]["kept_unique"]
  assert planned["train"]["pseudo_rows"] == stats["totals"]["with_copies"]
  # Before the filter has run, the plan counts from the predictions without writing: the same
  # totals as the filter that wrote stats.json (two paths of filter_phase agree).
  rule = filter_balance.FilterRule(threshold=0.0, images_per_class=20, seed=3)
  assert filter_phase.count_selection(
      str(chain["workdir"] / "iter_1" / "predict"), str(chain["root"] / "unlabeled"),
      rule) == stats["totals"]
  assert np.isclose(planned["train"]["pseudo_epochs"],
                    4 * 8 / stats["totals"]["with_copies"])
