"""Fixtures more than one test file uses."""

import collections
import os

import numpy as np
import pytest

from tests import bright_channel


@pytest.fixture
def plot_labels(monkeypatch):
  """{png name: [(x tick labels, title) per axes]} of every report plot saved during the test,
  read from the figure just before it is written."""
  from noisy_student import plots  # pylint: disable=g-import-not-at-top  (matplotlib is slow)
  seen = {}
  save = plots._save  # pylint: disable=protected-access

  def capture(figure, path):
    seen[os.path.basename(path)] = [([t.get_text() for t in ax.get_xticklabels()], ax.get_title())
                                    for ax in figure.axes]
    return save(figure, path)

  monkeypatch.setattr(plots, "_save", capture)
  return seen


@pytest.fixture
def prediction_records():
  """Reads a prediction shard: {field: its values in every record, in order}, float fields as a
  float32 array (NaN soft labels of undecodable images included), the others as lists."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def read(path):
    found, floats = collections.defaultdict(list), set()
    for serialized in tf.data.TFRecordDataset(str(path)):
      feature = tf.train.Example.FromString(serialized.numpy()).features.feature
      for field in feature:
        found[field].append(list(feature[field].ListFields()[0][1].value))
        if feature[field].HasField("float_list"):
          floats.add(field)
    return {field: np.array(values, np.float32) if field in floats else values
            for field, values in found.items()}
  return read


@pytest.fixture(scope="session")
def bright_channel_shards():
  """convert(root, split, n, seed, num_shards, unlabeled=False) -> the converted directory of n
  16x16 images in three classes a tiny network tells apart in a few steps: which channel is
  bright."""
  return bright_channel.converted


@pytest.fixture(scope="session")
def foreign_lines():
  """foreign_lines(stderr) -> the lines of a command's stderr that are not this project's own:
  its absl log lines (`I1207 12:00:00.000000 1234 train.py:42] ...` from a module of the
  project), its one-line errors (`main.py --mode=M: error: ...`, or noisy-student's) and the
  progress line of each Keras epoch that train runs (`57/57 - 12s - 210ms/step - ...`)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  modules = {"main.py"} | {p.name for package in ("data", "efficientnet", "noisy_student")
                           for p in (root / package).rglob("*.py")}
  log_line = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ (?P<file>[\w.]+\.py):\d+\] ")
  error_line = re.compile(r"^(main\.py|noisy-student) --mode=\w+: error: |^\d+/\d+ - \d+m?s - |"
                          r"^Epoch \d+/\d+$")

  def foreign(stderr):
    found = []
    for line in stderr.splitlines():
      match = log_line.match(line)
      if not (match and match["file"] in modules) and not error_line.match(line):
        found.append(line)
    return found
  return foreign


@pytest.fixture(scope="session")
def accelerator_inputs(tmp_path_factory, bright_channel_shards):
  """{root, labeled, unlabeled, eval, teacher}: bright-channel shards in 3 classes and a tiny
  untrained teacher. Session-scoped: tests/integration/test_accelerators.py, and the tests of
  noisy_student/inference.py and data/pipeline.py that came from it, share one copy."""
  import efficientnet  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("accelerators")
  # 21 unlabeled and 19 eval images: batches of 8 leave short last batches (5 and 3 per shard
  # pair), which run padded.
  teacher = root / "teacher.keras"
  keras.utils.set_random_seed(0)
  model = efficientnet.build_model("efficientnet-b0", 3, small_image=True, image_size=16,
                                   width_coefficient=0.1, depth_coefficient=0.1)
  # Random weights give soft labels within 0.01 of uniform; larger logits spread them, so that
  # no label sits within float noise of a tie.
  model.get_layer("predictions").kernel.assign(model.get_layer("predictions").kernel * 300)
  model.save(teacher)
  return {"root": root, "labeled": bright_channel_shards(root, "labeled", 48, 1, 2),
          "unlabeled": bright_channel_shards(root, "unlabeled", 21, 2, 2, unlabeled=True),
          "eval": bright_channel_shards(root, "eval", 19, 3, 2), "teacher": teacher}
