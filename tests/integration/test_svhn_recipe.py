"""The SVHN recipes end to end: SVHN-format .mat files -> convert -> teacher
(recipes/svhn_teacher.flags) -> predict -> filter -> student (recipes/svhn_student.flags) -> eval.

The data are tiny .mat files written here in SVHN's layout (`X` 32x32x3xN uint8, `y` Nx1 with 10
for digit 0): train/test labeled, extra unlabeled, as in the reference. Every phase runs through
main.py in this process, as tests/test_main.py does, with the recipe as --flagfile. The recipe
flags overridden, and why:
  --labeled_data, --eval_data, --unlabeled_data, --pseudo_labeled_data, --workdir, --checkpoint,
  --predictions, --output: the recipes name data/svhn/... and runs/svhn/...; here: tmp dirs.
  --validation_data= (none): the recipe's is the 4,000-image dev split; 20 images have no room.
  --train_steps=12 (recipe 109474) and --batch_size=10 (recipe 128; the student's pseudo-labeled
  rows follow: 10 * 5 = 50): time, and the tiny data. With 20 labeled images that is 6 epochs:
  --final_learning_rate needs a run longer than the recipe's 5 warm-up epochs (a shorter one
  is refused), so the recipe's warm-up stays as it is.
  --width_coefficient=0.1, --depth_coefficient=0.1 (recipe: B0's own): a smaller B0 traces and
  runs in seconds on 2 CPU cores. Image size, small-image stem, noise, schedule, loss and filter
  settings stay the recipe's, and the tests check they took effect.
The run is made once (module fixture); each test checks one phase. No accuracy is asserted.
"""

import json
import os
import pathlib

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from absl import flags

import main
from data import pipeline, preprocess, records

# About 40 s (the recipe's whole pipeline on tiny .mat files); the plan's SVHN arithmetic is in
# the default run (tests/noisy_student/training/test_plan.py).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEACHER = "--flagfile=recipes/svhn_teacher.flags"
STUDENT = "--flagfile=recipes/svhn_student.flags"
TINY = ["--train_steps=12", "--batch_size=10", "--width_coefficient=0.1",
        "--depth_coefficient=0.1"]
SIZES = {"train": 20, "test": 30, "extra": 40}   # extra: the unlabeled set, as in the reference


def run(*args):
  """main.py in this process (as tests/test_main.py), from the repository root: the student
  recipe includes recipes/svhn_teacher.flags by a path relative to the working directory."""
  flags.FLAGS.unparse_flags()
  cwd = os.getcwd()
  os.chdir(ROOT)   # contextlib.chdir needs Python 3.11
  try:
    flags.FLAGS(["main.py", *args])
    main.main(["main.py"])
  finally:
    os.chdir(cwd)


def _svhn_mat(path, n, seed):
  """An SVHN-format .mat: X [32, 32, 3, N] uint8, y [N, 1] in 1..10 (10 = digit 0), every class.

  Each digit gets its own colour plus noise, so the classes are learnable (not asserted)."""
  rng = np.random.default_rng(seed)
  digits = np.resize(np.arange(10), n)
  rng.shuffle(digits)
  colours = np.random.default_rng(0).integers(30, 226, (10, 3))
  images = colours[digits][:, None, None, :] + rng.integers(-25, 26, (n, 32, 32, 3))
  images = np.clip(images, 0, 255).astype(np.uint8)
  y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
  scipy.io.savemat(path, {"X": np.transpose(images, (1, 2, 3, 0)), "y": y})
  return y


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


def _keys(directory):
  spec = {records.KEY: tf.io.FixedLenFeature([], tf.string)}
  return [tf.io.parse_single_example(r, spec)[records.KEY].numpy().decode()
          for r in pipeline.ordered_records(pipeline.resolve_shards(str(directory)))]


def _labels_by_key(directory):
  spec = {records.KEY: tf.io.FixedLenFeature([], tf.string),
          records.LABEL: tf.io.FixedLenFeature([], tf.int64)}
  out = {}
  for serialized in pipeline.ordered_records(pipeline.resolve_shards(str(directory))):
    example = tf.io.parse_single_example(serialized, spec)
    out[example[records.KEY].numpy().decode()] = int(example[records.LABEL])
  return out


@pytest.fixture(scope="module")
def svhn(tmp_path_factory):
  """Runs the whole recipe once; returns the directories and the .mat labels."""
  root = tmp_path_factory.mktemp("svhn")
  data, runs = root / "data", root / "runs"
  mat_labels = {}
  for seed, (split, n) in enumerate(SIZES.items()):
    mat = root / f"{split}_32x32.mat"
    mat_labels[split] = _svhn_mat(mat, n, seed + 1)
    unlabeled = ["--unlabeled"] if split == "extra" else []
    run("--mode=convert", "--source=svhn_mat", f"--input={mat}", f"--output={data / split}",
        f"--split={split}", "--num_shards=2", *unlabeled)
  paths = [f"--labeled_data={data / 'train'}", f"--eval_data={data / 'test'}",
           f"--unlabeled_data={data / 'extra'}", "--validation_data="]

  run(TEACHER, "--mode=train", *paths, f"--workdir={runs / 'teacher'}", *TINY)
  run(STUDENT, "--mode=predict", *paths, f"--checkpoint={runs / 'teacher'}",
      f"--output={runs / 'predict'}")
  run(STUDENT, "--mode=filter", *paths, f"--predictions={runs / 'predict'}",
      f"--output={runs / 'pseudo'}")
  run(STUDENT, "--mode=train", *paths, f"--pseudo_labeled_data={runs / 'pseudo'}",
      f"--workdir={runs / 'student'}", *TINY)
  run(STUDENT, "--mode=eval", *paths, f"--checkpoint={runs / 'student'}",
      f"--output={runs / 'eval'}")
  return {"data": data, "runs": runs, "mat_labels": mat_labels}


def test_convert_maps_svhn_label_10_to_class_0(svhn):
  for split in ("train", "test"):
    y = svhn["mat_labels"][split].reshape(-1)
    got = _labels_by_key(svhn["data"] / split)
    assert got == {f"{split}/{i}": int(y[i]) % 10 for i in range(len(y))}
    assert {got[f"{split}/{i}"] for i in np.flatnonzero(y == 10)} == {0}
    manifest = _json(svhn["data"] / split / "manifest.json")
    assert manifest["class_names"] == [str(d) for d in range(10)]
    assert manifest["splits"][split]["class_counts"] == np.bincount(y % 10, minlength=10).tolist()
  extra = _json(svhn["data"] / "extra" / "manifest.json")["splits"]["extra"]
  assert extra["num_examples"] == SIZES["extra"] and not extra["labeled"]


def _check_recipe_settings(run_dir):
  """The SVHN settings both recipes share, as the train run recorded them."""
  written = _json(run_dir / "train_config.json")
  config = written["config"]
  assert config["model"] == "efficientnet-b0" and config["small_image"]
  assert config["normalization"] == "svhn"
  np.testing.assert_allclose(written["mean"], preprocess.SVHN_MEAN)
  np.testing.assert_allclose(written["std"], preprocess.SVHN_STD)
  assert written["image_size"] == 32 and config["image_size"] == 32
  assert (config["randaugment_layers"], config["randaugment_magnitude"]) == (2, 5)
  assert config["cutout"] is True and config["flip"] is False
  assert config["label_smoothing"] == 0.1 and config["ema_decay"] == 0.9999
  assert (config["dropout_rate"], config["survival_prob"]) == (0.2, 0.8)
  assert (config["base_learning_rate"], config["final_learning_rate"]) == (0.016, 0.0002)
  assert (config["weight_decay"], config["warmup_epochs"]) == (1e-4, 5)
  # Only the overrides differ from the recipe.
  assert (config["train_steps"], config["batch_size"]) == (12, 10)
  assert written["num_labeled"] == SIZES["train"] and written["num_classes"] == 10
  history = _json(run_dir / "history.json")
  assert history["total_steps"] == 12 and history["optimizer_iterations"] == 12
  assert (run_dir / "model.keras").exists()
  return written, history


def test_teacher_trains_with_the_recipe_settings(svhn):
  written, history = _check_recipe_settings(svhn["runs"] / "teacher")
  assert written["pseudo_labeled_data"] is None
  assert not any(history["history"]["unlabeled_loss"])   # labeled only


def test_predict_covers_every_unlabeled_image(svhn):
  summary = _json(svhn["runs"] / "predict" / "summary.json")
  assert summary["images"] == SIZES["extra"] and summary["undecodable"] == 0
  assert summary["num_classes"] == 10
  assert summary["top_k"] is None   # full soft distributions, as the reference's online teacher


def test_filter_keeps_every_soft_label_as_the_recipe_says(svhn):
  stats = _json(svhn["runs"] / "pseudo" / "stats.json")
  assert stats["threshold"] == 0 and stats["images_per_class"] is None   # no threshold, no balance
  totals = stats["totals"]
  assert totals["before_threshold"] == totals["after_threshold"] == SIZES["extra"]
  assert totals["kept_unique"] == totals["with_copies"] == SIZES["extra"]
  assert stats["num_records_written"] == SIZES["extra"] and totals["invalid"] == 0
  # --num_shards=128, capped at the records written (no empty shards).
  assert stats["soft_label"] == "probabilities" and stats["num_shards"] == SIZES["extra"]
  kept = _keys(svhn["runs"] / "pseudo")
  assert sorted(kept) == sorted(f"extra/{i}" for i in range(SIZES["extra"]))   # each once


def test_student_trains_on_labeled_and_soft_pseudo_labels(svhn):
  written, history = _check_recipe_settings(svhn["runs"] / "student")
  config = written["config"]
  assert config["unlabeled_batch_ratio"] == 5 and config["pseudo_labels"] == "soft"
  assert written["pseudo_labeled_data"] == str(svhn["runs"] / "pseudo")
  assert history["history"]["unlabeled_loss"][-1] > 0   # pseudo-labeled rows were trained on


def test_eval_writes_metrics(svhn):
  metrics = _json(svhn["runs"] / "eval" / "metrics.json")
  assert metrics["num_examples"] == SIZES["test"]
  assert 0 <= metrics["top1"] <= 1 and 0 <= metrics["top5"] <= 1
  assert len(metrics["per_class_accuracy"]) == 10
  # main.py's eval and the student run's own final eval (same EMA weights) agree.
  student = _json(svhn["runs"] / "student" / "history.json")
  assert metrics["top1"] == pytest.approx(student["eval"]["top1"])
