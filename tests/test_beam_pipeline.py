"""The Beam pipeline (in-process runner) against predict + filter on one machine, same input."""

import collections
import json
import os

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")

import keras  # noqa: E402  (after the skip: without Beam nothing here runs)
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import efficientnet  # noqa: E402
import main  # noqa: E402
from data import preprocess  # noqa: E402
from data import records  # noqa: E402
from noisy_student import beam_pipeline  # noqa: E402
from noisy_student import filter_phase  # noqa: E402
from noisy_student import predict  # noqa: E402

PREPROCESS = preprocess.PreprocessConfig(image_size=16, small_image=True)
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Three unlabeled shards (one empty, one with an image that does not decode) and a teacher.

  Each image is stored three times under different keys, across shards, so confidences tie and
  the top-N cut and the copies have to break ties by record order.
  """
  root = tmp_path_factory.mktemp("beam")
  rng = np.random.default_rng(0)
  images = [tf.io.encode_png(rng.integers(0, 255, (16, 16, 3), np.uint8)).numpy()
            for _ in range(14)]
  shards = {"a": [], "b": [], "c": []}
  for copy in range(3):
    for i, image in enumerate(images):
      shards["ab"[(i + copy) % 2]].append(records.make_example(key=f"img{i}-{copy}", image=image))
  shards["b"].insert(5, records.make_example(key="broken", image=b"not an image"))
  (root / "unlabeled").mkdir()
  for name, serialized in shards.items():
    records.write_atomically(str(root / "unlabeled" / f"{name}.tfrecord"), serialized)
  keras.utils.set_random_seed(0)
  model = efficientnet.build_model("efficientnet-b0", NUM_CLASSES, small_image=True,
                                   image_size=16, width_coefficient=0.1, depth_coefficient=0.1)
  # Random weights give soft labels within 0.01 of uniform; larger logits spread confidences over
  # the threshold.
  classifier = model.get_layer("predictions")
  classifier.kernel.assign(classifier.kernel * 300)
  model.save(root / "teacher.keras")
  return root


def _single_machine(root, out, config, **rule):
  model = keras.models.load_model(root / "teacher.keras", compile=False)
  predict.predict_phase(model, str(root / "unlabeled" / "*.tfrecord"), str(out / "predict"),
                        PREPROCESS, config)
  filter_phase.filter_and_balance_phase(str(out / "predict"), None, str(out / "filter"), **rule)


def _training_records(directory):
  """(key, label, soft label, confidence) -> how many times the shards hold it."""
  manifest = json.loads((directory / "manifest.json").read_text())
  found = collections.Counter()
  for name in manifest["splits"]["train"]["shards"]:
    for serialized in tf.data.TFRecordDataset(str(directory / name)):
      feature = tf.train.Example.FromString(serialized.numpy()).features.feature
      found[tuple((field, tuple(feature[field].ListFields()[0][1].value)) for field in
                  sorted(feature) if field != records.ENCODED)] += 1
  return found


def _compare(single, beamed):
  """Same prediction records and the same training records (with copies), file by file."""
  summaries = [json.loads((d / "predict" / "summary.json").read_text()) for d in (single, beamed)]
  for field in ("images", "undecodable", "num_classes", "top_k"):
    assert summaries[0][field] == summaries[1][field], field
  names = sorted(os.listdir(single / "predict"))
  assert sorted(os.listdir(beamed / "predict")) == names
  for name in names:
    if name.endswith(".tfrecord"):
      assert (single / "predict" / name).read_bytes() == (beamed / "predict" / name).read_bytes()

  stats = [json.loads((d / "filter" / "stats.json").read_text()) for d in (single, beamed)]
  inputs = [[(os.path.basename(i["prediction"]), i["count"]) for i in s.pop("inputs")]
            for s in stats]
  assert stats[0] == stats[1] and inputs[0] == inputs[1]
  manifests = [json.loads((d / "filter" / "manifest.json").read_text()) for d in (single, beamed)]
  assert manifests[0] == manifests[1]
  assert _training_records(single / "filter") == _training_records(beamed / "filter")
  # Stronger than the contract (same records in any order): the same shard assignment and shuffle.
  for name in manifests[0]["splits"]["train"]["shards"]:
    assert (single / "filter" / name).read_bytes() == (beamed / "filter" / name).read_bytes()
  assert os.path.exists(beamed / "filter" / "class_counts.png")
  return stats[1]


def test_beam_equals_single_machine_with_balancing_and_copies(inputs, tmp_path):
  config = predict.PredictConfig(batch_size=8)
  rule = dict(threshold=0.39, images_per_class=8, duplicate=True, seed=5, num_shards=3)
  _single_machine(inputs, tmp_path / "single", config, **rule)
  beam_pipeline.run_beam(str(inputs / "teacher.keras"), str(inputs / "unlabeled" / "*.tfrecord"),
                         str(tmp_path / "beam"), PREPROCESS, config, **rule)
  stats = _compare(tmp_path / "single", tmp_path / "beam")
  per_class = stats["per_class"]
  # The data exercises every part of the rule: the undecodable image, the threshold, a class cut
  # to N and a class filled to N by copies.
  assert stats["totals"]["invalid_label"] == 1
  assert stats["totals"]["after_threshold"] < stats["totals"]["before_threshold"]
  assert max(per_class["after_threshold"]) > 8 and stats["short_classes"]
  assert not list(tmp_path.rglob(".tmp-*"))


def test_main_beam_mode_top_k_without_balancing(inputs, tmp_path):
  config = predict.PredictConfig(top_k=2, batch_size=8)
  rule = dict(threshold=0.5, images_per_class=None, seed=3, num_shards=2)
  _single_machine(inputs, tmp_path / "single", config, **rule)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", "--mode=beam", f"--checkpoint={inputs / 'teacher.keras'}",
               f"--unlabeled_data={inputs / 'unlabeled' / '*.tfrecord'}",
               f"--output={tmp_path / 'beam'}", "--small_image", "--image_size=16",
               "--normalization=imagenet", "--top_k=2", "--batch_size=8",
               "--confidence_threshold=0.5", "--nobalance", "--seed=3", "--num_shards=2",
               "--beam_options=--runner=FnApiRunner"])
  main.main(["main.py"])
  stats = _compare(tmp_path / "single", tmp_path / "beam")
  assert stats["soft_label"] == "top_k" and stats["totals"]["with_copies"] > 0
