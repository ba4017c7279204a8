"""benchmarks/rehearse.py, its cheapest part: the reference-format data and SVHN's recipes through
predict -> filter -> train -> finetune -> eval -> export, checked from what the runs wrote."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import tensorflow as tf

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def _recipe_value(name, flag):
  """`flag`'s value in recipes/NAME.flags, read as text (nested files followed)."""
  value = None
  with open(os.path.join(ROOT, "recipes", f"{name}.flags"), encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if line.startswith("--flagfile="):
        value = _recipe_value(os.path.basename(line.split("=", 1)[1])[:-6], flag) or value
      elif line.startswith(f"--{flag}="):
        value = line.split("=", 1)[1]
  return value


@pytest.mark.slow
def test_rehearsal_of_the_svhn_recipes_on_reference_format_data(tmp_path):
  work = tmp_path / "rehearse"
  done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "rehearse.py"),
                         f"--workdir={work}", "--recipes=svhn", "--parts=data,phases"],
                        capture_output=True, text=True, timeout=1800, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  results = json.loads((work / "rehearse.json").read_text())
  runs = results["runs"]
  for phase in ("teacher", "predict", "filter", "student", "finetune", "eval", "export"):
    assert runs[f"svhn/{phase}"]["rc"] == 0, runs[f"svhn/{phase}"]
  # Every override is printed and recorded; the recipe's own shape is not among them.
  assert set(runs["svhn/student"]["overrides"]) == {
      "--batch_size=1", "--train_steps=1", "--warmup_epochs=0", "--inference_batch_size=2"}

  # The reference's ImageNet format, read back with plain protobuf parsing.
  shards = sorted(os.listdir(work / "reference" / "imagenet"))
  assert [s for s in shards if s.startswith("train-")][0] == "train-00000-of-00008"
  assert [s for s in shards if s.startswith("validation-")][0] == "validation-00000-of-00002"
  raw = {}
  for name in shards:
    if name.startswith("train-"):
      for record in tf.data.TFRecordDataset(str(work / "reference" / "imagenet" / name)):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        assert feature["image/encoded"].bytes_list.value[0][:2] == b"\xff\xd8"  # JPEG
        assert feature["image/format"].bytes_list.value[0] == b"JPEG"
        raw[feature["image/filename"].bytes_list.value[0].decode()] = (
            feature["image/class/label"].int64_list.value[0],
            feature["image/encoded"].bytes_list.value[0])
  assert sorted(label for label, _ in raw.values()) == list(range(1, 1001))
  converted = {}
  for record in tf.data.TFRecordDataset(
      sorted(str(p) for p in (work / "data" / "imagenet" / "train").glob("*.tfrecord"))):
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    converted[feature["image/key"].bytes_list.value[0].decode()] = (
        feature["image/class/label"].int64_list.value[0],
        feature["image/encoded"].bytes_list.value[0])
  assert converted == {f"train/{name}": (label - 1, encoded)
                       for name, (label, encoded) in raw.items()}

  # SVHN's .mat layout: X [32, 32, 3, N] uint8, y [N, 1] in 1..10.
  mat = scipy.io.loadmat(work / "reference" / "train_32x32.mat")
  assert mat["X"].shape[:3] == (32, 32, 3) and mat["X"].dtype == np.uint8
  assert mat["y"].shape == (mat["X"].shape[3], 1) and set(mat["y"].ravel()) == set(range(1, 11))

  # The runs kept the recipe's model, size and ratio (read from the recipe's text).
  student = json.loads((work / "runs" / "svhn" / "student" / "train_config.json").read_text())
  assert student["config"]["model"] == _recipe_value("svhn_teacher", "model")
  assert student["image_size"] == int(_recipe_value("svhn_teacher", "image_size"))
  assert student["config"]["unlabeled_batch_ratio"] == float(
      _recipe_value("svhn_student", "unlabeled_batch_ratio"))
  assert student["total_steps"] == 1 and student["config"]["batch_size"] == 1
  metrics = json.loads((work / "runs" / "svhn" / "eval" / "metrics.json").read_text())
  assert metrics["num_examples"] == 10  # the 10 test images rehearse.py wrote
  assert (work / "runs" / "svhn" / "export").is_dir()
