"""Evaluation while training (--eval_every_keras_epochs), on a tiny run through main.py.

The oracles: the run without it (training must end bit for bit where it does), the run's own
final evaluation (the last point is the model saved, measured the same way: the EMA weights
with batch norm recalibrated on the same images, so the same numbers), and the step arithmetic
of Keras epochs of 3 steps.
"""

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import main
from noisy_student import plots
from noisy_student.training import ema
from noisy_student.training import periodic_eval

NUM_CLASSES = 10
TINY_MODEL = ["--small_image", "--image_size=16", "--width_coefficient=0.1",
              "--depth_coefficient=0.1"]
# 400 labeled images in batches of 128: 3.125 steps a data epoch, Keras epochs of 3 steps, so
# 12 steps are 4 Keras epochs.
NUM_LABELED = 40 * NUM_CLASSES
TRAIN_STEPS = 12
STEPS_PER_KERAS_EPOCH = 3
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
                    [255, 0, 255], [0, 255, 255], [255, 255, 255], [128, 128, 128],
                    [255, 128, 0]])


def _run(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("periodic")
  for split, n, seed in (("labeled", NUM_LABELED, 0), ("validation", 100, 1), ("test", 120, 2)):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    noise = rng.normal(0, 30, (n, 16, 16, 3))
    images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    np.savez(root / f"{split}.npz", images=images, labels=labels)
    _run("--mode=convert", "--source=npz", f"--input={root / f'{split}.npz'}",
         f"--output={root / split}", f"--split={split}", "--num_shards=2")
  return root


def _train(data, workdir, *extra):
  _run("--mode=train", f"--labeled_data={data / 'labeled'}", f"--eval_data={data / 'test'}",
       f"--validation_data={data / 'validation'}", f"--workdir={workdir}",
       f"--train_steps={TRAIN_STEPS}", *TINY_MODEL, *extra)


def _state(model):
  """Every variable of the model and its optimizer (weights, batch-norm statistics, seed
  generators; step, RMSProp slots, EMA shadows), in creation order: a second model built in one
  process has other paths."""
  return [keras.ops.convert_to_numpy(v) for v in model.variables + model.optimizer.variables]


@pytest.fixture(scope="module")
def runs(data):
  """The same run without and with an evaluation after every Keras epoch: their workdirs, their
  states when fit returned, and the legend of the second's training_curves.png."""
  legends, ends = {}, {}
  save, swap = plots._save, ema.swap_to_ema  # pylint: disable=protected-access

  def capture(figure, path):
    legends[pathlib.Path(path).name] = [text.get_text() for ax in figure.axes
                                        if ax.get_legend() for text in ax.get_legend().get_texts()]
    return save(figure, path)

  def recording_swap(model, optimizer=None):
    # The periodic evaluations swap too; the run's last swap is the one after fit.
    ends[current] = _state(model)
    return swap(model, optimizer)

  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(ema, "swap_to_ema", recording_swap)
    current = "plain"
    _train(data, data / current)
    monkeypatch.setattr(plots, "_save", capture)
    current = "evaluated"
    _train(data, data / current, "--eval_every_keras_epochs=1")
  return data / "plain", data / "evaluated", ends, legends


# Oracle: the same run without evaluations (two paths agree: with = without, to the bit).
@pytest.mark.slow  # about 70 s with its sibling: two trainings
def test_periodic_eval_leaves_training_bit_identical(runs):
  plain, evaluated, ends, _ = runs
  history, expected = _json(evaluated / "history.json"), _json(plain / "history.json")
  curves = lambda h: {k: v for k, v in h["history"].items() if k != "wall_seconds"}
  assert curves(history) == curves(expected)
  assert history["optimizer_iterations"] == expected["optimizer_iterations"] == TRAIN_STEPS
  assert "periodic_eval" not in expected
  # What training left when fit returned, bit for bit: a variable the evaluations failed to put
  # back (a weight left at its average, recalibrated statistics, a dropout draw) would differ.
  assert len(ends["evaluated"]) == len(ends["plain"])
  for index, (value, reference) in enumerate(zip(ends["evaluated"], ends["plain"])):
    np.testing.assert_array_equal(value, reference, err_msg=f"variable {index}")
  # And so what the run saved and measured at the end. (Seed generator states are drawn anew
  # when a .keras file is loaded: not compared.)
  got, want = (keras.models.load_model(d / "model.keras", compile=False)
               for d in (evaluated, plain))
  for variable, reference in zip(got.variables, want.variables):
    if "seed_generator" not in variable.path:
      np.testing.assert_array_equal(variable.numpy(), reference.numpy(), err_msg=reference.path)
  assert history["inference_check"] == expected["inference_check"]
  assert _json(evaluated / "metrics.json") == _json(plain / "metrics.json")


@pytest.mark.slow  # shares the two trainings above
def test_periodic_eval_points_are_per_keras_epoch_and_end_at_the_saved_model(runs):
  _, evaluated, _, legends = runs
  history, metrics = _json(evaluated / "history.json"), _json(evaluated / "metrics.json")
  periodic = history["periodic_eval"]
  assert (periodic["split"], periodic["every_keras_epochs"]) == ("validation", 1)
  points = periodic["points"]
  epochs = TRAIN_STEPS // STEPS_PER_KERAS_EPOCH
  assert [p["keras_epoch"] for p in points] == list(range(1, epochs + 1))
  assert [p["step"] for p in points] == [STEPS_PER_KERAS_EPOCH * k for k in range(1, epochs + 1)]
  for p in points:
    assert p["data_epochs"] == pytest.approx(p["step"] / (NUM_LABELED / 128), abs=1e-12)
    assert p["num_examples"] == 100 and set(p) >= {"top1", "top5", "loss", "ece"}
    assert not any(isinstance(v, (dict, list)) for v in p.values())
  # The oracle of the last point: the final evaluation on the validation split. It runs on the
  # same weights (the EMA ones after the last step) with batch norm recalibrated on the same
  # labeled images, through the same eval path, so its numbers are the same; the loss and ECE
  # within float32 rounding, should the two recalibrations' kernels sum in another order.
  last, final = points[-1], metrics["validation"]
  assert last["top1"] == final["top1"] and last["num_examples"] == final["num_examples"]
  assert last["loss"] == pytest.approx(final["loss"], rel=1e-5)
  assert last["ece"] == pytest.approx(final["ece"], abs=1e-5)
  # The model moves between evaluations (the points are not one number repeated).
  assert len({p["loss"] for p in points}) == len(points)
  # TensorBoard: one scalar per point and metric, at Keras' 0-based epoch index.
  events = list((evaluated / "tensorboard" / periodic_eval.LOG_SUBDIR).glob("events.out.*"))
  assert len(events) == 1
  scalars = {}
  for event in tf.compat.v1.train.summary_iterator(str(events[0])):
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
  assert sorted(scalars) == sorted(f"validation_{n}" for n in periodic_eval.SCALARS)
  assert scalars["validation_top1"] == [(p["keras_epoch"] - 1, pytest.approx(p["top1"]))
                                        for p in points]
  assert any(label.startswith("validation top-1") for label in legends["training_curves.png"])


@pytest.mark.parametrize("every, total, expected", [
    (1, 4, [0, 1, 2, 3]),
    (3, 8, [2, 5, 7]),   # every third, and the last
    (5, 4, [3]),         # only the last
    (0, 4, []),          # off
])
def test_evaluates_after_every_n_keras_epochs_and_the_last(every, total, expected):
  assert [e for e in range(total) if periodic_eval.evaluates_after(e, every, total)] == expected


def test_periodic_eval_without_data_to_evaluate_is_an_error_before_training(data, tmp_path):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", "--mode=train", f"--labeled_data={data / 'labeled'}",
               f"--workdir={tmp_path / 'w'}", f"--train_steps={TRAIN_STEPS}", *TINY_MODEL,
               "--eval_every_keras_epochs=2"])
  with pytest.raises(SystemExit, match="--eval_every_keras_epochs needs --validation_data"):
    main.main(["main.py"])
  assert not (tmp_path / "w").exists()
