"""The TFRecord schema every phase shares, and atomic shard writing.

One `tf.train.Example` per image:
  image/encoded      bytes   PNG or JPEG
  image/key          bytes   unique, stable id of the source image (survives shuffling and copies)
  image/class/label  int64   0-based class; absent in unlabeled shards; the hard pseudo label in
                             filter output
Prediction shards (predict) and training shards (filter) add:
  probabilities      float   C values (soft label), or instead
  top_k_classes      int64   k class ids and
  top_k_probabilities float  their probabilities (stored as float16 values) when --top_k is set
  confidence         float   max probability
Prediction shards carry no image bytes: record i belongs to record i of the input shard, and the
key proves it.
"""

import contextlib
import os
import uuid

import numpy as np
import tensorflow as tf

ENCODED = "image/encoded"
KEY = "image/key"
LABEL = "image/class/label"
PROBABILITIES = "probabilities"
TOP_K_CLASSES = "top_k_classes"
TOP_K_PROBABILITIES = "top_k_probabilities"
CONFIDENCE = "confidence"


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32)))


def make_example(*, key, image=None, label=None, probabilities=None, top_k_classes=None,
                 top_k_probabilities=None, confidence=None):
  """Serialises one record; fields left as None are omitted."""
  feature = {KEY: _bytes([key if isinstance(key, bytes) else str(key).encode()])}
  if image is not None:
    feature[ENCODED] = _bytes([image])
  if label is not None:
    feature[LABEL] = _ints([label])
  if probabilities is not None:
    feature[PROBABILITIES] = _floats(probabilities)
  if top_k_classes is not None:
    feature[TOP_K_CLASSES] = _ints(top_k_classes)
    # float16 precision, stored in a float list: halves nothing on disk but keeps the values the
    # reader sees identical whatever the writer's dtype was.
    feature[TOP_K_PROBABILITIES] = _floats(np.asarray(top_k_probabilities, np.float16))
  if confidence is not None:
    feature[CONFIDENCE] = _floats([confidence])
  # deterministic: features is a map, which protobuf otherwise writes in an order that varies
  # from process to process; a rerun (after a kill, or on another machine) writes the same bytes.
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
      deterministic=True)


def temporary_path(final_path):
  """A sibling name that readers' globs never match, unique per writer."""
  directory, name = os.path.split(final_path)
  return os.path.join(directory, f".tmp-{uuid.uuid4().hex[:8]}-{name}")


def without_hidden(paths):
  """`paths` minus hidden files (name starting with "."), such as a killed writer's `.tmp-*`
  temporaries: shell globs skip those, tf.io.gfile.glob does not."""
  return [path for path in paths if not os.path.basename(path).startswith(".")]


@contextlib.contextmanager
def atomic_path(final_path):
  """Yields a temporary sibling of `final_path` to write; renames it to `final_path` when the
  block ends, and removes it when the block raises: no half-written file under the final name."""
  tmp = temporary_path(final_path)
  try:
    yield tmp
    tf.io.gfile.rename(tmp, final_path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise


def write_atomically(final_path, serialized_records, options=None):
  """Writes records to a temporary file and renames it to `final_path` once complete."""
  count = 0
  with atomic_path(final_path) as tmp, tf.io.TFRecordWriter(tmp, options=options) as writer:
    for record in serialized_records:
      writer.write(record)
      count += 1
  return count


def write_text_atomically(final_path, text):
  with atomic_path(final_path) as tmp, tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)


def write_bytes_atomically(final_path, data):
  with atomic_path(final_path) as tmp, tf.io.gfile.GFile(tmp, "wb") as f:
    f.write(data)


def shard_name(prefix, index, num_shards):
  return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"
