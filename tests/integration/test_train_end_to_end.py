"""Numbers a user can trust: `main.py --mode=train` end to end on data a tiny model learns.

One module fixture trains a teacher through main.py with the default flags (only the tiny model
and the run length changed) and records the model and optimizer at the end of training, before
the EMA weights are swapped in. The tests check that run against independent oracles: the saved
model holds the EMA shadows, its batch-norm statistics are those of a NumPy recomputation, a
killed and resumed run ends bit for bit where the uninterrupted one does, a diverging run stops
with one line keeping its last good backup, and without recalibration the same run's saved
model collapses in inference mode.
"""

import dataclasses
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
from absl import flags

import main
from data import pipeline
from noisy_student.training import ema
from noisy_student.phases import train

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_MODEL = ["--small_image", "--image_size=16", "--width_coefficient=0.1",
              "--depth_coefficient=0.1"]
NUM_CLASSES = 10
# 400 labeled images in the default batches of 128: 3.125 steps a data epoch, so Keras epochs of
# 3 steps (a backup every 3 steps) and a 5-epoch (15-step) warm-up. 24 steps take the tiny model
# from chance to about 90% on this data (measured: 0.91 test top-1).
NUM_LABELED = 40 * NUM_CLASSES
NUM_TEST = 20 * NUM_CLASSES
TRAIN_STEPS = 24
STEPS_PER_KERAS_EPOCH = 3
INFERENCE_BATCH = 256  # --inference_batch_size's default: the end of a run reads 256 + 144 images
RUN_TIMEOUT_S = 600
# Chance is 0.1. A model at chance scores >= 0.6 on 200 test images with probability below
# 1e-60 (binomial), and 0.6 leaves room below the 0.91 measured for numerics of other CPUs.
LEARNED_TOP1 = 0.6
# Ten mean colours far apart (the corners of the RGB cube, grey, orange): pad-crop and flips,
# the default augmentation, keep them, so the class is in every pixel.
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
                    [255, 0, 255], [0, 255, 255], [255, 255, 255], [128, 128, 128],
                    [255, 128, 0]])


def _images(n, seed):
  """n 16x16 images, classes balanced and shuffled: the class colour plus pixel noise."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(n) % NUM_CLASSES)
  noise = rng.normal(0, 30, (n, 16, 16, 3))
  images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
  return images, labels


def _run_in_process(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


def _command(*args):
  return [sys.executable, str(ROOT / "main.py"), *args]


@dataclasses.dataclass
class EndOfTraining:
  """What a run holds when model.fit returns: the live values, in creation order (names of
  Keras' seed generators depend on how many models the process built), and the EMA shadows by
  the averaged variable's path."""
  step: int
  model_variables: list   # (path, value): weights, batch-norm statistics, seed generator states
  optimizer_variables: list  # (path, value): step, RMSProp slots, EMA shadows
  shadows: dict           # path of the averaged variable -> its shadow


def _record_end_of_training(monkeypatch):
  """train() calls ema.swap_to_ema right after fit returns; the patch records the state then,
  read from the live objects and independent of anything the run writes."""
  recorded = []
  swap = ema.swap_to_ema

  def recording_swap(model, optimizer=None):
    optimizer = optimizer or model.optimizer
    recorded.append(EndOfTraining(
        step=int(optimizer.iterations.numpy()),
        model_variables=[(v.path, keras.ops.convert_to_numpy(v)) for v in model.variables],
        optimizer_variables=[(v.path, keras.ops.convert_to_numpy(v))
                             for v in optimizer.variables],
        shadows={v.path: keras.ops.convert_to_numpy(a) for v, a in optimizer.moving_averages}))
    return swap(model, optimizer)

  monkeypatch.setattr(ema, "swap_to_ema", recording_swap)
  return recorded


def _train_args(data, workdir, *extra):
  """The default flags except the tiny model and the run length."""
  return ["--mode=train", f"--labeled_data={data / 'labeled'}", f"--eval_data={data / 'test'}",
          f"--workdir={workdir}", f"--train_steps={TRAIN_STEPS}", *TINY_MODEL, *extra]


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("easy")
  for split, n, seed in (("labeled", NUM_LABELED, 0), ("test", NUM_TEST, 1)):
    images, labels = _images(n, seed)
    np.savez(root / f"{split}.npz", images=images, labels=labels)
    _run_in_process("--mode=convert", "--source=npz", f"--input={root / f'{split}.npz'}",
                    f"--output={root / split}", f"--split={split}", "--num_shards=2")
  return root


class _Errors(logging.Handler):
  def __init__(self):
    super().__init__(logging.ERROR)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def default_run(easy_data):
  """The uninterrupted default run: its workdir, its state at the end of training and the
  errors it logged."""
  errors = _Errors()
  logging.getLogger().addHandler(errors)
  try:
    with pytest.MonkeyPatch.context() as monkeypatch:
      recorded = _record_end_of_training(monkeypatch)
      workdir = easy_data / "default"
      _run_in_process(*_train_args(easy_data, workdir))
  finally:
    logging.getLogger().removeHandler(errors)
  assert len(recorded) == 1
  return workdir, recorded[0], errors.messages


def _assert_same_state(got, want):
  """Bit for bit, in creation order: Keras numbers the seed generators of a second model built
  in one process, so paths may differ."""
  assert got.step == want.step
  for kind in ("model_variables", "optimizer_variables"):
    values, expected = getattr(got, kind), getattr(want, kind)
    assert len(values) == len(expected)
    for (_, value), (name, expected_value) in zip(values, expected):
      np.testing.assert_array_equal(value, expected_value, err_msg=name)
  assert got.shadows.keys() == want.shadows.keys()


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


def _layers(model, kind):
  layers = model._flatten_layers(include_self=False)  # pylint: disable=protected-access
  return [layer for layer in layers if isinstance(layer, kind)]


def _batch_norm_layers(model):
  return _layers(model, keras.layers.BatchNormalization)


def _eval_batches(data, workdir):
  """The labeled images as the run's recalibration and inference check read them: eval
  preprocessing, in record order, in batches of the inference batch (--inference_batch_size's
  default), never of the training batch."""
  config = train.TrainConfig(**_json(workdir / "train_config.json")["config"])
  prep = train.preprocess_config(config, str(data / "labeled"), train=False)
  return [(images.numpy(), labels.numpy()) for images, labels in
          pipeline.eval_dataset(str(data / "labeled"), prep, batch_size=INFERENCE_BATCH)]


def _recomputed_batch_statistics(model, batches):
  """Per batch-norm layer, the mean over `batches`, weighted by their sizes, of the NumPy mean and
  (biased) variance of the layer's input when every batch norm normalises with batch statistics,
  no noise."""
  norms = _batch_norm_layers(model)
  for layer in _layers(model, keras.layers.Dropout):
    layer.rate = 0.0  # dropout and stochastic depth are noise, off for statistics
  inputs = keras.Model(model.inputs, [layer.input for layer in norms])
  per_batch = []
  for images, _ in batches:
    features = [np.asarray(f, np.float64) for f in inputs(images, training=True)]
    per_batch.append([(f.mean(axis=(0, 1, 2)), f.var(axis=(0, 1, 2))) for f in features])
  sizes = [len(labels) for _, labels in batches]
  return {layer.name: tuple(np.average([b[i][k] for b in per_batch], axis=0, weights=sizes)
                            for k in (0, 1))
          for i, layer in enumerate(norms)}


def _top1(model, batches):
  hits = sum(int((np.argmax(model(images, training=False), axis=1) == labels).sum())
             for images, labels in batches)
  return hits / sum(len(labels) for _, labels in batches)


# 1. Learning, and what the saved model holds.


def test_default_run_learns_and_saves_the_ema_weights_with_recalibrated_batch_norm(
    easy_data, default_run):
  workdir, end, _ = default_run
  metrics = _json(workdir / "metrics.json")
  history = _json(workdir / "history.json")
  assert end.step == history["optimizer_iterations"] == TRAIN_STEPS
  assert metrics["num_examples"] == NUM_TEST
  assert metrics["top1"] >= LEARNED_TOP1, metrics["top1"]

  saved = keras.models.load_model(workdir / "model.keras", compile=False)
  live = dict(end.model_variables)
  # Every trainable weight is its EMA shadow, to the bit (a copy, saved as float32). The live
  # weights are elsewhere, so saving them instead would fail here.
  assert sorted(v.path for v in saved.trainable_variables) == sorted(
      path for path, _ in end.model_variables if path in end.shadows and "/moving_" not in path)
  moved = 0
  for variable in saved.trainable_variables:
    np.testing.assert_array_equal(variable.numpy(), end.shadows[variable.path], variable.path)
    moved += not np.array_equal(live[variable.path], end.shadows[variable.path])
  assert moved >= 0.9 * len(saved.trainable_variables)

  # The batch-norm statistics are not the shadows but recalibrated: the mean over the labeled
  # batches of each layer's batch statistics under the saved weights.
  check = history["inference_check"]
  assert (check["recalibrated"], check["images"], check["batches"]) == (True, NUM_LABELED, 2)
  assert check["averaged_inference_top1"] < check["batch_statistics_top1"] - train.RECALIBRATION_GAP
  batches = _eval_batches(easy_data, workdir)
  assert [len(labels) for _, labels in batches] == [INFERENCE_BATCH, NUM_LABELED - INFERENCE_BATCH]
  norms = _batch_norm_layers(saved)
  stored = {n.name: (n.moving_mean.numpy(), n.moving_variance.numpy()) for n in norms}
  # Before the recomputation, which runs the model in training mode and so moves the statistics.
  assert _top1(saved, batches) == check["inference_top1"]
  expected = _recomputed_batch_statistics(saved, batches)
  assert len(stored) == 22
  for name, (mean, variance) in stored.items():
    # Keras' float32 moments against NumPy's float64 ones of the same activations; measured
    # 1.4e-7 absolute on the means (some are ~0) and 7e-7 relative on the variances. The
    # tolerance leaves room for other CPUs' kernels.
    np.testing.assert_allclose(mean, expected[name][0], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(variance, expected[name][1], rtol=1e-4, atol=1e-5, err_msg=name)
    # ... and the same tolerance tells every layer's statistics from its shadows.
    shadows = np.concatenate([end.shadows[f"{name}/moving_mean"],
                              end.shadows[f"{name}/moving_variance"]])
    assert not np.allclose(np.concatenate([mean, variance]), shadows, rtol=1e-4, atol=1e-5), name


# 2. Resume.


def _start_and_kill(args, log, marker):
  """Starts main.py, SIGKILLs it as soon as `marker` exists (polling: no fixed sleeps on a loaded
  machine); fails when the run ended before it could be killed."""
  with open(log, "w") as out:
    process = subprocess.Popen(_command(*args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
  try:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not marker.exists() and process.poll() is None:
      assert time.monotonic() < deadline, f"no {marker} within {RUN_TIMEOUT_S} s"
      time.sleep(0.005)
    assert process.poll() is None, pathlib.Path(log).read_text()[-3000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


# Oracle: the project's own unskipped stream (two paths agree: skipped = tail of the full one).
@pytest.mark.parametrize("stream", ["labeled", "pseudo_labeled"])
def test_a_skipped_training_stream_is_the_tail_of_the_full_one(easy_data, stream):
  """What a resumed run reads: from example `skip` on, the same images with the same
  augmentation (RandAugment, crop, flip: seeded per example) as the uninterrupted stream."""
  config = train.TrainConfig(train_steps=1, small_image=True, image_size=16, randaugment_layers=2,
                             randaugment_magnitude=9, cutout=True)
  prep = train.preprocess_config(config, str(easy_data / "labeled"))
  make = {"labeled": pipeline.labeled_dataset,
          "pseudo_labeled": lambda *a, **k: pipeline.pseudo_labeled_dataset(
              *a, pseudo_labels="hard", **k)}[stream]
  skip, n = 390, 20  # across the end of the first pass over the 400 records
  full = make(str(easy_data / "labeled"), prep, num_classes=NUM_CLASSES, seed=4, batch_size=n)
  tail = full.unbatch().skip(skip).batch(n)
  resumed = make(str(easy_data / "labeled"), prep, num_classes=NUM_CLASSES, seed=4, batch_size=n,
                 skip=skip)
  (want_images, want_labels), = tail.take(1)
  (images, labels), = resumed.take(1)
  np.testing.assert_array_equal(labels.numpy(), want_labels.numpy())
  np.testing.assert_array_equal(images.numpy(), want_images.numpy())  # same ops, same seeds
  (head, _), = full.take(1)
  assert not np.array_equal(images.numpy(), head.numpy())  # the skip skipped


# Oracle: the same run uninterrupted (two paths agree: killed and resumed = uninterrupted).
def test_killed_run_resumes_to_the_uninterrupted_weights_slots_shadows_and_step(
    easy_data, default_run, tmp_path, monkeypatch):
  reference_dir, reference, _ = default_run
  workdir = tmp_path / "resumed"
  args = _train_args(easy_data, workdir)
  _start_and_kill(args, tmp_path / "killed.log", workdir / "backup" / "latest.weights.h5")
  assert not (workdir / "model.keras").exists()
  recorded = _record_end_of_training(monkeypatch)
  _run_in_process(*args)
  (resumed,) = recorded
  history, expected = _json(workdir / "history.json"), _json(reference_dir / "history.json")
  keras_epochs = TRAIN_STEPS // STEPS_PER_KERAS_EPOCH
  assert history["steps_per_keras_epoch"] == STEPS_PER_KERAS_EPOCH
  assert 1 <= history["initial_epoch"] < keras_epochs  # resumed from a backup, not from scratch
  assert resumed.step == reference.step == TRAIN_STEPS
  # Weights, batch-norm statistics, RMSProp slots, EMA shadows (optimizer variables), step and
  # seed generators, bit for bit: one machine, the same batches in the same order, the same
  # augmentation and dropout draws. A repeated batch or a dropout draw would move every weight
  # (measured: without the input skip, or without restoring the dropout seeds, by up to 0.05).
  _assert_same_state(resumed, reference)
  # Each resumed Keras epoch saw the batches of the uninterrupted run's epoch of that number.
  resumed_epochs = history["history"]["loss"]
  assert resumed_epochs == expected["history"]["loss"][history["initial_epoch"]:]
  assert history["inference_check"] == expected["inference_check"]
  assert _json(workdir / "metrics.json")["top1"] == _json(reference_dir / "metrics.json")["top1"]


# 3. Divergence.


def _h5_arrays(path):
  arrays = {}
  with h5py.File(path, "r") as f:
    f.visititems(lambda name, item: arrays.update(
        {name: item[()]} if isinstance(item, h5py.Dataset) else {}))
  return arrays


def test_diverging_run_stops_with_one_line_and_keeps_its_last_good_backup(easy_data, tmp_path):
  workdir = tmp_path / "diverged"
  backup = workdir / "backup" / "latest.weights.h5"
  # Batches of 200 of the 400 images: Keras epochs of 2 steps and a 10-step warm-up from rate 0.
  # Epoch 1's losses (steps 0 and 1) are taken before any weight moves (step 0 runs at rate 0),
  # so they are finite; step 1's update at a rate of 1e30 * 200/256 / 10 = 8e28 moves weights so
  # far that their squares in the L2 term overflow float32 (3.4e38): epoch 2's loss is not finite.
  args = _train_args(easy_data, workdir, "--batch_size=200", "--train_steps=6",
                     "--base_learning_rate=1e30")
  result = subprocess.run(_command(*args), capture_output=True, text=True, cwd=ROOT,
                          timeout=RUN_TIMEOUT_S)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr + result.stdout
  last = result.stderr.strip().splitlines()[-1]
  prefix = "main.py --mode=train: error: training diverged: the loss of Keras epoch 2 is "
  assert last.startswith(prefix), result.stderr[-3000:]
  assert last[len(prefix):].split(" ")[0] in ("nan", "inf")
  assert "(by step 4)" in last and str(backup) in last
  assert not (workdir / "model.keras").exists() and not (workdir / "history.json").exists()
  # The backup is the end of Keras epoch 1, the last finite one: step 2, every value finite.
  arrays = _h5_arrays(backup)
  assert arrays["optimizer/vars/0"] == 2  # the optimizer's step count comes first
  assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


# 4. Batch-norm collapse of a short run.


def test_without_recalibration_the_same_run_is_broken_in_inference_mode(
    easy_data, default_run, tmp_path, monkeypatch, caplog):
  default_dir, default_end, default_errors = default_run
  workdir = tmp_path / "no_recalibration"
  recorded = _record_end_of_training(monkeypatch)
  with caplog.at_level(logging.ERROR):
    _run_in_process(*_train_args(easy_data, workdir, "--batch_norm_recalibration=never"))
  (end,) = recorded
  history, default_history = _json(workdir / "history.json"), _json(default_dir / "history.json")
  # The same run: recalibration comes after training, which is deterministic.
  curves = lambda h: {k: v for k, v in h["history"].items() if k != "wall_seconds"}
  assert curves(history) == curves(default_history)
  _assert_same_state(end, default_end)
  off, on = history["inference_check"], default_history["inference_check"]
  assert (off["recalibrated"], off["images"], off["batches"]) == (False, NUM_LABELED, 2)
  assert off["batch_statistics_top1"] == on["batch_statistics_top1"] >= LEARNED_TOP1
  # Without recalibration the saved statistics are the EMA shadows of the moving statistics
  # (measured, then put back). After 24 steps at momentum 0.99 the moving statistics are still
  # 0.99**24 = 79% their start (mean 0, variance 1): the model is at chance in inference mode
  # (measured 0.10 on the training images and the test set, seeds 0-2; 0.90-0.92 with batch
  # statistics).
  saved = keras.models.load_model(workdir / "model.keras", compile=False)
  for layer in _batch_norm_layers(saved):
    for variable in (layer.moving_mean, layer.moving_variance):
      np.testing.assert_array_equal(variable.numpy(), end.shadows[variable.path], variable.path)
  assert off["inference_top1"] <= off["batch_statistics_top1"] - 0.5  # 5x the warning's gap
  assert _json(workdir / "metrics.json")["top1"] <= 0.3
  broken = [r.getMessage() for r in caplog.records if "broken in inference mode" in r.getMessage()]
  assert len(broken) == 1 and "--batch_norm_recalibration=never: use auto or always" in broken[0]
  assert not [m for m in default_errors if "broken in inference mode" in m]
  # The default (auto) measured the same averaged statistics, found them far below the batch
  # statistics and recalibrated: inference mode then uses the average of the very batch
  # statistics it is compared with, within a few points (measured 0.9175 and 0.91), and the
  # test top-1 is a learned one.
  assert on["averaged_inference_top1"] == off["averaged_inference_top1"] == off["inference_top1"]
  assert on["recalibrated"] and on["inference_top1"] >= on["batch_statistics_top1"] - 0.05
  assert _json(default_dir / "metrics.json")["top1"] >= LEARNED_TOP1


def test_auto_keeps_statistics_that_fit_and_recalibrates_ones_that_do_not(easy_data, default_run):
  """settle_batch_norm's rule on the default run's saved model, whose statistics fit its weights
  (recalibrated at the end of the run): auto keeps them to the bit; the same model with its
  moving variances scaled by 100 is far below its batch-statistics top-1, and auto replaces them
  by the NumPy recomputation's values; never keeps even those."""
  workdir, _, _ = default_run
  config = train.TrainConfig(**_json(workdir / "train_config.json")["config"])
  labeled = str(easy_data / "labeled")
  batches = _eval_batches(easy_data, workdir)
  model = keras.models.load_model(workdir / "model.keras", compile=False)
  norms = _batch_norm_layers(model)
  saved = [(n.moving_mean.numpy(), n.moving_variance.numpy()) for n in norms]
  expected = _recomputed_batch_statistics(
      keras.models.load_model(workdir / "model.keras", compile=False), batches)

  kept = train.settle_batch_norm(model, config, labeled)
  assert not kept["recalibrated"]
  assert kept["inference_top1"] == kept["averaged_inference_top1"] == _top1(model, batches)
  assert kept["batch_statistics_top1"] - kept["inference_top1"] <= train.RECALIBRATION_GAP
  for layer, (mean, variance) in zip(norms, saved):
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean, layer.name)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), variance, layer.name)

  for layer, (_, variance) in zip(norms, saved):
    layer.moving_variance.assign(variance * 100)
  never = train.settle_batch_norm(model, dataclasses.replace(
      config, batch_norm_recalibration="never"), labeled)
  assert not never["recalibrated"]
  assert never["inference_top1"] < never["batch_statistics_top1"] - train.RECALIBRATION_GAP
  for layer, (_, variance) in zip(norms, saved):
    np.testing.assert_array_equal(layer.moving_variance.numpy(), variance * 100, layer.name)

  fixed = train.settle_batch_norm(model, config, labeled)
  assert fixed["recalibrated"]
  assert fixed["averaged_inference_top1"] == never["inference_top1"]
  assert fixed["inference_top1"] >= fixed["batch_statistics_top1"] - 0.05
  for layer in norms:
    mean, variance = expected[layer.name]
    # Keras' float32 moments against NumPy's float64 ones, the first test's tolerance.
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-4, atol=1e-5)


# 6. The end of a run, and a workdir that holds one.


def test_the_end_of_a_run_never_builds_a_batch_larger_than_the_inference_batch(
    easy_data, tmp_path, monkeypatch):
  """Batch-norm check and recalibration and the final eval, after fit: every model call they
  make holds at most --inference_batch_size images (the run trains on batches four times that),
  through the inference step. The run is exactly the steps asked, its last Keras epoch short."""
  import efficientnet  # pylint: disable=g-import-not-at-top
  from noisy_student import inference  # pylint: disable=g-import-not-at-top
  after_fit, sizes, steps = [], [], []
  swap = ema.swap_to_ema
  monkeypatch.setattr(ema, "swap_to_ema",
                      lambda *a, **k: (after_fit.append(True), swap(*a, **k))[1])
  call = efficientnet.EfficientNet.__call__

  def recording_call(self, inputs, *args, **kwargs):
    if after_fit:
      sizes.append(inputs.shape[0])
    return call(self, inputs, *args, **kwargs)

  monkeypatch.setattr(efficientnet.EfficientNet, "__call__", recording_call)
  step_call = inference.InferenceStep.__call__
  monkeypatch.setattr(inference.InferenceStep, "__call__", lambda self, images: (
      steps.append((self.training, int(images.shape[0]))), step_call(self, images))[1])
  # 7 steps of 400 / 64 = 6.25 steps an epoch: Keras epochs of 6 and a last one of 1.
  _run_in_process(*_train_args(easy_data, tmp_path / "bounded", "--batch_size=64",
                               "--inference_batch_size=16", "--train_steps=7",
                               "--batch_norm_recalibration=always"))
  history = _json(tmp_path / "bounded" / "history.json")
  assert history["optimizer_iterations"] == 7  # as asked, not rounded up to 12
  assert history["history"]["step"] == [6, 7]
  np.testing.assert_allclose(history["history"]["data_epoch"], [6 * 64 / 400, 7 * 64 / 400])
  known = [size for size in sizes if size is not None]
  assert known and max(known) <= 16, sizes
  # Inference mode for the check and the eval, training mode (batch statistics) to recalibrate:
  # all of the labeled sample and the test set, 16 at a time.
  assert {training for training, _ in steps} == {False, True}
  assert max(count for _, count in steps) == 16
  assert sum(count for training, count in steps if training) == NUM_LABELED


def test_a_finished_workdir_is_reported_refused_or_overwritten(easy_data, default_run, tmp_path,
                                                               capsys):
  """The same command again reports the finished run and does nothing; other settings are an
  error naming the difference; --overwrite removes what the old run left, then trains."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(default_run[0], workdir)  # the default run, finished (its workdir is no setting)
  args = _train_args(easy_data, workdir)
  model = workdir / "model.keras"
  first = (model.read_bytes(), model.stat().st_mtime_ns)
  capsys.readouterr()
  _run_in_process(*args)
  assert json.loads(capsys.readouterr().out.splitlines()[-1])["finished_before"] is True
  assert (model.read_bytes(), model.stat().st_mtime_ns) == first
  with pytest.raises(SystemExit, match=r"holds a finished train run with other settings "
                     r"\(config\.width_coefficient: 0\.1 -> 0\.2\)\. Use another --workdir, "
                     r"or --overwrite"):
    _run_in_process(*args, "--width_coefficient=0.2")
  (workdir / "left_by_the_old_run.txt").write_text("x")
  old_events = list((workdir / "tensorboard").rglob("events.*"))
  _run_in_process(*args, "--width_coefficient=0.2", "--overwrite", "--train_steps=2")
  assert not (workdir / "left_by_the_old_run.txt").exists()
  assert not any(path.exists() for path in old_events)
  assert _json(workdir / "train_config.json")["config"]["width_coefficient"] == 0.2
  saved = keras.models.load_model(model, compile=False)
  assert saved.efficientnet_config["width_coefficient"] == 0.2
