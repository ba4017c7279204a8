"""The Beam pipeline (in-process runner) against predict + filter on one machine, same input.

Beam predicts one shard at a time while predict batches across shard boundaries: the teacher
sees the same images in other batches, and float results need not be bit-identical across
batchings on every CPU. Predictions are compared record by record (keys, counts, labels and
order exactly, probabilities within PROBABILITY_ATOL); Beam's filter is compared byte for byte
with the single-machine filter run on Beam's own prediction files, the same computation.
"""

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
from data import pipeline  # noqa: E402
from data import preprocess  # noqa: E402
from data import records  # noqa: E402
from noisy_student.phases import beam_pipeline  # noqa: E402
from noisy_student import filter_balance  # noqa: E402
from noisy_student.phases import filter_phase  # noqa: E402
from noisy_student.phases import predict  # noqa: E402

PREPROCESS = preprocess.PreprocessConfig(image_size=16, small_image=True)
NUM_CLASSES = 3
# Another batching reorders float32 sums in the convolutions: seen up to 1.5e-7 on the
# probabilities of predict split over workers (test_distribute.py, TF_ENABLE_ONEDNN_OPTS=0).
# 1e-5 leaves room for other CPUs' kernels; the fixture checks that no two probabilities of an
# image are that close, so labels and top-k order cannot flip on such noise and compare exactly.
PROBABILITY_ATOL = 1e-5
# Top-k probabilities are stored as float16: noise can round to the neighbouring float16, 2**-11
# apart just below 1.
TOP_K_ATOL = 2.0**-11 + PROBABILITY_ATOL


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
  stream = pipeline.predict_dataset(pipeline.resolve_shards(str(root / "unlabeled" / "*")),
                                    PREPROCESS, batch_size=64)
  ranked = np.sort(np.concatenate([predict.soft_labels(model(images, training=False))
                                   for _, _, images in stream]), axis=1)
  assert len(ranked) == 42 and np.diff(ranked, axis=1).min() > 2 * PROBABILITY_ATOL
  return root


def _single_machine_predict(root, out, config):
  model = keras.models.load_model(root / "teacher.keras", compile=False)
  predict.predict_phase(model, str(root / "unlabeled" / "*.tfrecord"), str(out), PREPROCESS,
                        config)


def _assert_same_predictions(expected, actual, read):
  """Prediction shards of two directories: the same files, each with the same records in the
  same order (keys, labels, top-k classes exactly; soft labels and confidence within tolerance).
  """
  names = sorted(n for n in os.listdir(expected) if n.endswith(".tfrecord"))
  assert sorted(n for n in os.listdir(actual) if n.endswith(".tfrecord")) == names
  for name in names:
    want, got = read(expected / name), read(actual / name)
    assert sorted(got) == sorted(want), name
    for field in want:
      if field in (records.PROBABILITIES, records.CONFIDENCE, records.TOP_K_PROBABILITIES):
        atol = TOP_K_ATOL if field == records.TOP_K_PROBABILITIES else PROBABILITY_ATOL
        np.testing.assert_allclose(got[field], want[field], rtol=0, atol=atol, equal_nan=True,
                                   err_msg=f"{name} {field}")
      else:
        assert got[field] == want[field], (name, field)


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


def _compare(single, beamed, rule, num_shards, read):
  """Beam's predictions against the single machine's, and Beam's filter output against
  filter_phase's on Beam's prediction files (the same input, so the same bytes)."""
  summaries = [json.loads((d / "summary.json").read_text()) for d in (single, beamed / "predict")]
  for field in ("images", "undecodable", "num_classes", "top_k"):
    assert summaries[0][field] == summaries[1][field], field
  _assert_same_predictions(single, beamed / "predict", read)

  oracle = beamed.parent / "oracle_filter"
  filter_phase.filter_and_balance_phase(str(beamed / "predict"), None, str(oracle), rule,
                                        num_shards=num_shards)
  stats = [json.loads((d / "stats.json").read_text()) for d in (oracle, beamed / "filter")]
  assert stats[0] == stats[1]
  manifests = [json.loads((d / "manifest.json").read_text()) for d in (oracle, beamed / "filter")]
  assert manifests[0] == manifests[1]
  assert _training_records(oracle) == _training_records(beamed / "filter")
  # Stronger than the contract (same records in any order): the same shard assignment and shuffle.
  for name in manifests[0]["splits"]["train"]["shards"]:
    assert (oracle / name).read_bytes() == (beamed / "filter" / name).read_bytes()
  assert os.path.exists(beamed / "filter" / "class_counts.png")
  return stats[1]


# Oracle: the project's own predict and filter phases (two paths agree: Beam = one machine);
# against hand-made counts: test_balance_keeps_the_n_best_and_fills_a_short_class_by_hand.
def test_beam_equals_single_machine_with_balancing_and_copies(inputs, tmp_path,
                                                              prediction_records):
  config = predict.PredictConfig(batch_size=8)
  rule = filter_balance.FilterRule(threshold=0.39, images_per_class=8, duplicate=True, seed=5)
  _single_machine_predict(inputs, tmp_path / "single", config)
  beam_pipeline.run_beam(str(inputs / "teacher.keras"), str(inputs / "unlabeled" / "*.tfrecord"),
                         str(tmp_path / "beam"), PREPROCESS, config, rule, num_shards=3)
  stats = _compare(tmp_path / "single", tmp_path / "beam", rule, 3, prediction_records)
  per_class = stats["per_class"]
  # The data exercises every part of the rule: the undecodable image, the threshold, a class cut
  # to N and a class filled to N by copies.
  assert stats["totals"]["invalid_label"] == 1
  assert stats["totals"]["after_threshold"] < stats["totals"]["before_threshold"]
  assert max(per_class["after_threshold"]) > 8 and stats["short_classes"]
  assert not list(tmp_path.rglob(".tmp-*"))


# Oracle: the project's own predict and filter phases (two paths agree: Beam = one machine).
def test_main_beam_mode_top_k_without_balancing(inputs, tmp_path, prediction_records):
  _single_machine_predict(inputs, tmp_path / "single", predict.PredictConfig(top_k=2, batch_size=8))
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", "--mode=beam", f"--checkpoint={inputs / 'teacher.keras'}",
               "--normalization=imagenet",
               f"--unlabeled_data={inputs / 'unlabeled' / '*.tfrecord'}",
               f"--output={tmp_path / 'beam'}", "--small_image", "--image_size=16",
               "--normalization=imagenet", "--top_k=2", "--batch_size=8",
               "--confidence_threshold=0.5", "--nobalance", "--seed=3", "--num_shards=2",
               "--beam_options=--runner=FnApiRunner"])
  main.main(["main.py"])
  rule = filter_balance.FilterRule(threshold=0.5, images_per_class=None, seed=3)
  stats = _compare(tmp_path / "single", tmp_path / "beam", rule, 2, prediction_records)
  assert stats["soft_label"] == "top_k" and stats["totals"]["with_copies"] > 0


def _balanced(label, best, rule):
  """_Balance's kept (shard, record, copies) rows and its tagged class row."""
  kept, tagged = [], []
  balance = beam_pipeline._Balance(NUM_CLASSES, rule)  # pylint: disable=protected-access
  for out in balance.process((label, best)):
    if isinstance(out, beam.pvalue.TaggedOutput):
      tagged.append(out.value)
    else:
      shard, (record, copies) = out
      kept.append((shard, record, copies))
  return kept, tagged


def test_balance_keeps_the_n_best_and_fills_a_short_class_by_hand():
  """A record id is shard << 40 | record (the shard index in the bits above the record's);
  Top.PerKey hands each class its N best as (confidence, -id)."""
  rule = filter_balance.FilterRule(threshold=0.3, images_per_class=5, duplicate=True, seed=1)
  ids = [(1 << 40) + 7, 3]  # shard 1 record 7, shard 0 record 3
  kept, tagged = _balanced(2, [(0.9, -ids[0]), (0.8, -ids[1])], rule)
  # Two records filled to 5: 5 = 2 + 3, one copy more for one of them (the seed says which).
  assert sorted((shard, record) for shard, record, _ in kept) == [(0, 3), (1, 7)]
  assert sorted(copies for _, _, copies in kept) == [2, 3]
  assert tagged == [(2, 2, 5)]
  best = [(0.9 - i / 10, -(i << 40)) for i in range(5)]  # already cut to 5: each kept once
  kept, tagged = _balanced(0, best, rule)
  assert sorted(kept) == [(i, 0, 1) for i in range(5)] and tagged == [(0, 5, 5)]


def test_shard_counts_add_up_whatever_the_grouping():
  rng = np.random.default_rng(7)
  parts = [{"before": rng.integers(0, 9, NUM_CLASSES), "invalid_label": int(rng.integers(3))}
           for _ in range(4)]
  want = {"before": sum(p["before"] for p in parts).tolist(),
          "invalid_label": sum(p["invalid_label"] for p in parts)}
  add = beam_pipeline._add_counts  # pylint: disable=protected-access
  for total in (add(parts), add([add(parts[:2]), add(parts[2:])]), add(parts[::-1])):
    assert {"before": total["before"].tolist(), "invalid_label": total["invalid_label"]} == want
