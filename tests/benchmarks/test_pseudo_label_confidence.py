"""benchmarks/pseudo_label_confidence.py: the confidences read back from prediction shards equal
the ones written (protobuf built here, not by the project's writer)."""

import numpy as np
import tensorflow as tf

from data import records
from tests.benchmarks import script


def _script():
  return script.load("pseudo_label_confidence")


def test_confidences_are_every_record_of_every_shard(tmp_path):
  written = np.random.default_rng(0).uniform(0, 1, 50).astype(np.float32)
  for shard, part in enumerate((written[:20], written[20:])):
    with tf.io.TFRecordWriter(str(tmp_path / f"unlabeled-0000{shard}-of-00002.tfrecord")) as w:
      for value in part:
        feature = {records.CONFIDENCE: tf.train.Feature(
            float_list=tf.train.FloatList(value=[value]))}
        w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                .SerializeToString())
  np.testing.assert_array_equal(_script().confidences(str(tmp_path)), written)
