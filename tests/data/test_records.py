"""data/records.py: the shared record schema, parsed back with protobuf, and atomic writing."""

import os

import numpy as np
import pytest
import tensorflow as tf

from data import records


def _fields(serialized):
  feature = tf.train.Example.FromString(serialized).features.feature
  return {name: list(feature[name].ListFields()[0][1].value) for name in feature}


def test_make_example_writes_exactly_the_fields_given():
  fields = _fields(records.make_example(key="a/b.png", image=b"\x89PNG", label=3,
                                        probabilities=[0.1, 0.7, 0.2], confidence=0.7))
  assert fields == {records.KEY: [b"a/b.png"], records.ENCODED: [b"\x89PNG"], records.LABEL: [3],
                    records.PROBABILITIES: pytest.approx(np.float32([0.1, 0.7, 0.2]).tolist()),
                    records.CONFIDENCE: [pytest.approx(float(np.float32(0.7)))]}
  assert _fields(records.make_example(key=b"k")) == {records.KEY: [b"k"]}


def test_top_k_probabilities_are_stored_at_float16_precision():
  probabilities = [0.6123456, 0.3000001]
  fields = _fields(records.make_example(key=7, top_k_classes=[4, 1],
                                        top_k_probabilities=probabilities))
  assert fields[records.KEY] == [b"7"] and fields[records.TOP_K_CLASSES] == [4, 1]
  assert fields[records.TOP_K_PROBABILITIES] == np.float16(probabilities).astype(float).tolist()


def test_the_same_record_is_the_same_bytes_whatever_the_argument_order():
  one = records.make_example(confidence=0.5, label=1, key="k", probabilities=[0.5, 0.5])
  other = records.make_example(key="k", probabilities=[0.5, 0.5], label=1, confidence=0.5)
  assert one == other


def test_write_atomically_leaves_the_records_or_nothing(tmp_path):
  path = str(tmp_path / records.shard_name("train", 2, 10))
  assert os.path.basename(path) == "train-00002-of-00010.tfrecord"
  written = [records.make_example(key=f"k{i}") for i in range(5)]
  assert records.write_atomically(path, iter(written)) == 5
  assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == written

  def failing():
    yield written[0]
    raise RuntimeError("killed while writing")

  with pytest.raises(RuntimeError, match="killed while writing"):
    records.write_atomically(path, failing())
  assert os.listdir(tmp_path) == [os.path.basename(path)]  # the temporary removed
  assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == written  # the old file kept


def test_temporaries_are_hidden_from_readers(tmp_path):
  final = str(tmp_path / "stats.json")
  temporary = records.temporary_path(final)
  assert os.path.dirname(temporary) == str(tmp_path)
  assert os.path.basename(temporary).startswith(".tmp-") and temporary.endswith("stats.json")
  assert records.temporary_path(final) != temporary  # one per writer
  assert records.without_hidden([final, temporary, str(tmp_path / "a.json")]) == [
      final, str(tmp_path / "a.json")]
  records.write_text_atomically(final, "{}\n")
  records.write_bytes_atomically(str(tmp_path / "b.bin"), b"\x00\x01")
  assert (tmp_path / "stats.json").read_text() == "{}\n"
  assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
  assert sorted(os.listdir(tmp_path)) == ["b.bin", "stats.json"]
