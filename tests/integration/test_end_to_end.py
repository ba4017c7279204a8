"""main.py end to end: convert -> train (teacher) -> predict -> filter -> train (student) -> eval,
on a tiny data set made here, with a tiny model; plus bad-input errors on that data."""

import json

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import main
from tests import bright_channel

TINY_MODEL = ["--small_image", "--image_size=16", "--width_coefficient=0.1",
              "--depth_coefficient=0.1"]


def run(*args):
  """Runs main.py's mode in this process (TensorFlow is imported once for all tests)."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


CLASS_NAMES = ["red", "green", "blue"]  # what tells the classes of `_images` apart


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  for split, n, seed in (("labeled", 48, 1), ("unlabeled", 72, 2), ("test", 30, 3)):
    images, labels = bright_channel.images(n, seed)
    np.savez(root / f"{split}.npz", images=images, labels=labels)
    run("--mode=convert", "--source=npz", f"--input={root / split}.npz",
        f"--output={root / split}", f"--split={split}", "--num_shards=2",
        f"--class_names={','.join(CLASS_NAMES)}")
  return root


def _keys(path):
  spec = {"image/key": tf.io.FixedLenFeature([], tf.string)}
  return [tf.io.parse_single_example(r, spec)["image/key"].numpy()
          for r in tf.data.TFRecordDataset(str(path))]


def test_teacher_predict_filter_student_eval(converted, tmp_path, plot_labels):
  d = converted
  common = [*TINY_MODEL, "--batch_size=8", "--warmup_epochs=0", "--seed=3"]
  run("--mode=train", f"--labeled_data={d / 'labeled'}", f"--eval_data={d / 'test'}",
      f"--workdir={tmp_path / 'teacher'}", "--train_steps=12", "--randaugment_layers=2",
      "--randaugment_magnitude=5", "--cutout", *common)
  assert (tmp_path / "teacher" / "model.keras").exists()
  history = json.loads((tmp_path / "teacher" / "history.json").read_text())
  assert history["total_steps"] == 12 and "labeled_loss" in history["history"]
  assert list((tmp_path / "teacher" / "tensorboard").rglob("events.out.tfevents.*"))

  run("--mode=predict", f"--checkpoint={tmp_path / 'teacher'}",
      f"--unlabeled_data={d / 'unlabeled'}", f"--output={tmp_path / 'predict'}", "--batch_size=16")
  summary = json.loads((tmp_path / "predict" / "summary.json").read_text())
  assert summary["images"] == 72 and summary["num_classes"] == 3
  # The teacher's class names (its labeled data's) are recorded for the filter's reports: an
  # unlabeled pool of one's own has none.
  assert summary["class_names"] == CLASS_NAMES
  for entry in summary["shards"]:   # record i of a prediction shard is record i of its input
    assert _keys(tmp_path / "predict" / entry["output"]) == _keys(entry["input"])

  run("--mode=filter", f"--predictions={tmp_path / 'predict'}",
      f"--unlabeled_data={d / 'unlabeled'}", f"--output={tmp_path / 'filter'}",
      "--images_per_class=10", "--confidence_threshold=0", "--num_shards=2")
  stats = json.loads((tmp_path / "filter" / "stats.json").read_text())
  kept = stats["per_class"]["with_copies"]
  assert all(k in (0, 10) for k in kept) and sum(kept) > 0
  # The names given to convert reach the filter's manifest and plots.
  assert json.loads((tmp_path / "filter" / "manifest.json").read_text())["class_names"] == (
      CLASS_NAMES)
  assert plot_labels["class_counts.png"][0][0] == CLASS_NAMES

  run("--mode=train", f"--labeled_data={d / 'labeled'}",
      f"--pseudo_labeled_data={tmp_path / 'filter'}", "--unlabeled_batch_ratio=2",
      f"--eval_data={d / 'test'}", f"--workdir={tmp_path / 'student'}", "--train_steps=6",
      "--randaugment_layers=2", "--randaugment_magnitude=5", *common)
  student = json.loads((tmp_path / "student" / "history.json").read_text())
  assert student["history"]["unlabeled_loss"][-1] > 0   # pseudo-labeled rows were trained on

  run("--mode=eval", f"--checkpoint={tmp_path / 'student'}", f"--eval_data={d / 'test'}",
      f"--output={tmp_path / 'eval'}", "--batch_size=7")
  metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert metrics["num_examples"] == 30
  assert set(metrics) >= {"top1", "top5", "loss", "per_class_accuracy"}
  assert sorted(metrics["per_class_accuracy"]) == sorted(CLASS_NAMES)   # keyed by name
  assert plot_labels["per_class_accuracy.png"][0][0] == list(metrics["per_class_accuracy"])
  # The train run's own evaluation (EMA weights) and the eval mode agree.
  assert metrics["top1"] == pytest.approx(student["eval"]["top1"])
  assert not list(tmp_path.rglob(".tmp-*"))


def _error(*args):
  with pytest.raises(SystemExit) as raised:
    run(*args)
  return str(raised.value)


def test_bad_input_is_a_clear_error_before_work(converted, tmp_path):
  d = converted
  message = _error("--mode=eval", f"--checkpoint={tmp_path / 'nothing'}",
                   f"--eval_data={d / 'test'}")
  assert "nothing" in message and "does not exist" in message
  empty = tmp_path / "empty"
  empty.mkdir()
  message = _error("--mode=train", f"--labeled_data={empty}", f"--workdir={tmp_path / 'w'}",
                   "--train_steps=1", *TINY_MODEL)
  assert str(empty) in message
  assert not (tmp_path / "w" / "model.keras").exists()


def test_checkpoint_with_other_class_count_is_rejected(converted, tmp_path):
  import efficientnet  # pylint: disable=g-import-not-at-top
  model = efficientnet.build_model("efficientnet-b0", 5, small_image=True,
                                   width_coefficient=0.1, depth_coefficient=0.1)
  model.save(tmp_path / "five.keras")
  message = _error("--mode=eval", f"--checkpoint={tmp_path / 'five.keras'}",
                   "--normalization=imagenet", f"--eval_data={converted / 'test'}")
  assert "5 classes" in message and "3" in message
