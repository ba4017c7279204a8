"""Readers: TFRecord shards (local or gs://) -> the tf.data streams the phases consume.

A `data` argument is either a directory holding `manifest.json` (its shards for one split are
read) or a glob of shards such as `gs://bucket/svhn/train-*.tfrecord`.

Training streams (`labeled_dataset`, `pseudo_labeled_dataset`) interleave shuffled shards, shuffle
records and augment with per-element stateless seeds: the same seed gives the same batches, and
`skip` continues such a stream where an earlier one stopped (a resumed run).
Eval and predict streams are ordered. Records whose bytes or image cannot be read are skipped
with a logged warning (`ignore_errors`); `scan_shards` counts and names them.
"""

import collections
import os

import tensorflow as tf

from data import batch_layout
from data import decode
from data import manifest as manifest_lib
from data import preprocess
from data import records

AUTOTUNE = tf.data.AUTOTUNE
CYCLE_LENGTH = 16  # shards read at once while training
SHUFFLE_BUFFER = 10_000  # records; ~1 GB of ImageNet JPEGs, ~10 MB of 32x32 PNGs
PSEUDO_LABELS = ("soft", "hard")


def resolve_shards(data, split=None):
  """Sorted shard paths named by `data`.

  Args:
    data: a directory with `manifest.json`, or a glob of TFRecord shards (local or gs://).
    split: the manifest split to read; None means the only one. Ignored for globs.

  Raises:
    FileNotFoundError: when nothing matches.
  """
  if tf.io.gfile.isdir(data):
    manifest = manifest_lib.load_manifest(data)
    if manifest is None:
      raise FileNotFoundError(f"{data} has no {manifest_lib.MANIFEST_NAME}; pass a glob of "
                              f"shards instead, e.g. {os.path.join(data, '*.tfrecord')}")
    shards = sorted(manifest_lib.split_shards(manifest, data, split))
  else:
    shards = sorted(records.without_hidden(tf.io.gfile.glob(data)))
  if not shards:
    raise FileNotFoundError(f"no TFRecord shards match {data!r}")
  return shards


def worker_shards(shards, num_workers, worker_index):
  """This worker's share of `shards` (every num_workers-th file): disjoint, together all."""
  if not 0 <= worker_index < num_workers:
    raise ValueError(f"worker_index {worker_index} is not in [0, {num_workers})")
  return list(shards)[worker_index::num_workers]


def ordered_records(shards, with_shard_index=False):
  """Serialized records of `shards`, file after file, each file in order; with
  `with_shard_index`, (index of the record's file in `shards`, record) pairs.

  A damaged file (truncated, bad CRC) gives its records up to the damage, then the next file.
  """
  files = tf.data.Dataset.from_tensor_slices(list(shards))
  if not with_shard_index:
    return files.flat_map(_read_shard)
  return files.enumerate().flat_map(
      lambda index, path: _read_shard(path).map(lambda record: (index, record)))


def train_records(data, *, seed, split=None, num_workers=1, worker_index=0,
                  shuffle_buffer=SHUFFLE_BUFFER, repeat=True):
  """Serialized records for training: this worker's share, interleaved and shuffled.

  With at least as many shards as workers, each worker reads its own shards
  (`worker_shards`); with fewer, every worker reads all of them in order and keeps every
  num_workers-th record. Either way the workers' records are disjoint and cover the data.
  Deterministic given `seed`.
  """
  shards = resolve_shards(data, split)
  if len(shards) >= num_workers:
    mine = worker_shards(shards, num_workers, worker_index)
    files = tf.data.Dataset.from_tensor_slices(mine).shuffle(len(mine), seed=seed)
    if repeat:
      files = files.repeat()
    rows = files.interleave(_read_shard, cycle_length=min(CYCLE_LENGTH, len(mine)),
                            block_length=1, num_parallel_calls=AUTOTUNE, deterministic=True)
  else:
    rows = ordered_records(shards).shard(num_workers, worker_index)
    if repeat:
      rows = rows.repeat()
  return rows.shuffle(shuffle_buffer, seed=seed)


def labeled_dataset(data, config, *, batch_size=None, num_classes=None, seed=0, split=None,
                    num_workers=1, worker_index=0, shuffle_buffer=SHUFFLE_BUFFER, repeat=True,
                    skip=0):
  """Augmented labeled training stream.

  Args:
    data: directory with manifest.json or glob of shards.
    config: `preprocess.PreprocessConfig`.
    batch_size: rows per batch (drop_remainder=True); None for single examples.
    num_classes: C; None reads it from the manifest.
    seed: seeds file order, record shuffling and augmentation.
    split: manifest split; None for the only one.
    num_workers, worker_index: multi-worker sharding (see `train_records`).
    shuffle_buffer: records in the shuffle buffer.
    repeat: repeat forever (False: one pass, for tests and epoch counting).
    skip: examples of the stream already trained on (a resumed run): the stream starts at
      example `skip`, with the augmentation it has in the full stream (see `_train_stream`).

  Returns:
    Dataset of (image float32 [B, S, S, 3] normalised, label one-hot float32 [B, C]); without
    the leading B when batch_size is None.
  """
  num_classes = _num_classes(data, num_classes)

  def parse(serialized, element_seed):
    example = _parse(serialized)
    target = _one_hot(example["label"], num_classes)
    return preprocess.train_transform(example["encoded"], element_seed, config), target

  return _train_stream(data, parse, seed=seed, split=split, num_workers=num_workers,
                       worker_index=worker_index, shuffle_buffer=shuffle_buffer, repeat=repeat,
                       batch_size=batch_size, skip=skip)


def pseudo_labeled_dataset(data, config, *, num_classes, pseudo_labels="soft", temperature=1.0,
                           batch_size=None, seed=1, num_workers=1, worker_index=0,
                           shuffle_buffer=SHUFFLE_BUFFER, repeat=True, split=None, skip=0):
  """Augmented stream over filter output (pseudo-labeled training shards).

  Records hold `probabilities` (C floats), or `top_k_classes` + `top_k_probabilities` (scattered
  into a C vector and renormalised to sum 1), and `image/class/label`, the hard pseudo label.

  Args:
    pseudo_labels: "soft" -> target is the (renormalised) distribution; "hard" -> one-hot of
      `image/class/label`.
    temperature: soft targets are p^(1/T) / sum(p^(1/T)) of the stored (T=1) distribution p,
      the reference's offline form of softmax(logits / T).
    Other arguments as in `labeled_dataset`; give the two streams different seeds so their
    augmentations are independent.

  Returns:
    Dataset of (image float32 [B, S, S, 3], target float32 [B, C]); no B when batch_size is None.
  """
  if pseudo_labels not in PSEUDO_LABELS:
    raise ValueError(f"pseudo_labels must be one of {PSEUDO_LABELS}, got {pseudo_labels!r}")
  if not temperature > 0:
    raise ValueError(f"--temperature must be > 0, got {temperature}")

  def parse(serialized, element_seed):
    example = _parse(serialized, soft=pseudo_labels == "soft")
    if pseudo_labels == "soft":
      target = _soft_target(example, num_classes, temperature)
    else:
      target = _one_hot(example["label"], num_classes)
    return preprocess.train_transform(example["encoded"], element_seed, config), target

  return _train_stream(data, parse, seed=seed, split=split, num_workers=num_workers,
                       worker_index=worker_index, shuffle_buffer=shuffle_buffer, repeat=repeat,
                       batch_size=batch_size, skip=skip)


def student_dataset(labeled, pseudo, batch_size, unlabeled_batch_ratio):
  """Batches for the student: `batch_size` labeled rows first, then the pseudo-labeled rows.

  Args:
    labeled: stream of (image, target), batched or not (see `labeled_dataset`).
    pseudo: same for pseudo-labeled data, or None (teacher training: labeled batches only).
    batch_size: labeled rows per batch (B).
    unlabeled_batch_ratio: r; each batch holds B*r pseudo-labeled rows (B*r must be whole).

  Returns:
    Endless dataset of (images float32 [B(1+r), S, S, 3], targets float32 [B(1+r), C]): rows
    [0, B) are labeled and rows [B, B(1+r)) pseudo-labeled. The loss slices by position, so
    this order is part of the contract. drop_remainder=True.
  """
  labeled = _unbatched(labeled).repeat().batch(batch_size, drop_remainder=True)
  if pseudo is None:
    return labeled.prefetch(AUTOTUNE)
  pseudo = _unbatched(pseudo).repeat().batch(
      batch_layout.unlabeled_rows(batch_size, unlabeled_batch_ratio), drop_remainder=True)
  both = tf.data.Dataset.zip((labeled, pseudo))
  return both.map(lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)),
                  num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def eval_dataset(data, config, *, batch_size, split=None, with_keys=False, normalized=True):
  """Ordered, unaugmented evaluation stream (eval preprocessing).

  Args:
    normalized: False gives uint8 pixels (cropped and resized, rounded and clipped) for code that
      alters images before the model, such as robustness evaluation; it then normalises itself
      with `preprocess.normalize`.

  Returns:
    Dataset of (image float32 [B, S, S, 3], label int32 [B]), or (image, label, key string [B])
    when `with_keys` (do not hand that form to `model.evaluate`: it reads a third element as
    sample weights). Unlabeled records have label -1. The last batch may be smaller.
  """
  def parse(serialized):
    example = _parse(serialized)
    pixels = preprocess.eval_pixels(example["encoded"], config)
    if not normalized:
      pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
    return pixels, tf.cast(example["label"], tf.int32), example["key"]

  def finish(pixels, label, key):
    image = preprocess.normalize(pixels, config) if normalized else pixels
    return (image, label, key) if with_keys else (image, label)

  rows = ordered_records(resolve_shards(data, split))
  rows = rows.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
  rows = rows.ignore_errors(log_warning=True)
  # Normalised a batch at a time: two ops per batch, not per image (7-10% more images/s at 32x32).
  return rows.batch(batch_size).map(finish).prefetch(AUTOTUNE)


def predict_dataset(shards, config, *, batch_size=None):
  """Ordered (shard index, key, image) of `shards`, eval preprocessing: file after file, record i
  of a file i-th among its records.

  One stream for all of a worker's shards: traced once, and decoding runs ahead across file
  boundaries instead of stalling at each new file (per-file streams cost predict a sixth of its
  time at 224x224). Batches can span two files; the shard index says where each image belongs.

  A record whose image cannot be decoded is skipped (logged), which shifts later positions:
  writers should carry the keys they get here rather than assume positions.

  Returns:
    Dataset of (shard index int64 [B], key string [B], image float32 [B, S, S, 3]); no B when
    batch_size is None.
  """
  def parse(index, serialized):
    example = _parse(serialized)
    return index, example["key"], preprocess.eval_pixels(example["encoded"], config)

  rows = ordered_records(shards, with_shard_index=True).map(parse, num_parallel_calls=AUTOTUNE,
                                                            deterministic=True)
  rows = rows.ignore_errors(log_warning=True)
  if batch_size:
    rows = rows.batch(batch_size)  # Normalised after batching, as in `eval_dataset`.
  return rows.map(lambda index, key, pixels: (index, key, preprocess.normalize(pixels, config))
                  ).prefetch(AUTOTUNE)


def scan_shards(data, split=None):
  """Counts what the readers would skip. Reads everything once: a diagnostic, not a hot path.

  Returns:
    dict with "records" (readable records), "decodable" (records whose image decodes),
    "damaged_shards" (paths whose bytes stop being readable part-way) and "corrupt_keys"
    (keys of records whose image does not decode, one entry per such record).
  """
  shards = resolve_shards(data, split)
  damaged = []
  for shard in shards:
    try:
      for _ in tf.data.TFRecordDataset(shard):
        pass
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
      damaged.append(shard)
  keys = ordered_records(shards).map(_parse, num_parallel_calls=AUTOTUNE)
  all_keys = collections.Counter(k.numpy() for k in keys.map(lambda e: e["key"]))
  good = keys.map(lambda e: (e["key"], decode.decode_rgb(e["encoded"])),
                  num_parallel_calls=AUTOTUNE).ignore_errors()
  good_keys = collections.Counter(k.numpy() for k, _ in good)
  corrupt = sorted((all_keys - good_keys).elements())
  return {"records": sum(all_keys.values()), "decodable": sum(good_keys.values()),
          "damaged_shards": damaged, "corrupt_keys": [k.decode() for k in corrupt]}


def _read_shard(path):
  return tf.data.TFRecordDataset(path).ignore_errors(log_warning=True)


def _train_stream(data, parse, *, seed, split, num_workers, worker_index, shuffle_buffer, repeat,
                  batch_size, skip=0):
  """`parse`d training examples from `skip` on.

  The skipped records are passed over as serialized bytes, before `parse` decodes and augments
  them: resuming at step k of a run reads k batches of records again but decodes none of them.
  Records are numbered before the skip, so each later one keeps its augmentation seed. A record
  `parse` fails on is dropped from the stream (`ignore_errors`) but still counted by `skip`: a
  resumed stream continues exactly where the earlier one stopped unless some of the skipped
  records were bad, in which case it starts that many examples early.
  """
  rows = train_records(data, seed=seed, split=split, num_workers=num_workers,
                       worker_index=worker_index, shuffle_buffer=shuffle_buffer, repeat=repeat)

  def with_seed(index, serialized):
    # Unique per element and worker, so augmentations never repeat across workers or epochs.
    element = index * num_workers + worker_index
    return parse(serialized, tf.stack([tf.constant(seed, tf.int64), element]))

  rows = rows.enumerate()
  if skip:
    rows = rows.skip(skip)
  rows = rows.map(with_seed, num_parallel_calls=AUTOTUNE, deterministic=True)
  rows = rows.ignore_errors(log_warning=True)
  if batch_size:
    rows = rows.batch(batch_size, drop_remainder=True)
  return rows.prefetch(AUTOTUNE)


def _parse(serialized, soft=False):
  spec = {
      records.ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
      records.KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
      records.LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }
  if soft:
    spec[records.PROBABILITIES] = tf.io.VarLenFeature(tf.float32)
    spec[records.TOP_K_CLASSES] = tf.io.VarLenFeature(tf.int64)
    spec[records.TOP_K_PROBABILITIES] = tf.io.VarLenFeature(tf.float32)
  features = tf.io.parse_single_example(serialized, spec)
  example = {"encoded": features[records.ENCODED], "key": features[records.KEY],
             "label": features[records.LABEL]}
  if soft:
    for name in (records.PROBABILITIES, records.TOP_K_CLASSES, records.TOP_K_PROBABILITIES):
      example[name] = tf.sparse.to_dense(features[name])
  return example


def _one_hot(label, num_classes):
  # A missing (-1) or out-of-range label would silently become an all-zero target; failing the
  # element instead gets it skipped and logged by ignore_errors.
  valid = tf.logical_and(label >= 0, label < num_classes)
  with tf.control_dependencies([tf.debugging.Assert(valid, ["bad label", label])]):
    return tf.one_hot(label, num_classes, dtype=tf.float32)


def _soft_target(example, num_classes, temperature=1.0):
  probabilities = example[records.PROBABILITIES]

  def from_top_k():
    classes = example[records.TOP_K_CLASSES][:, tf.newaxis]
    dense = tf.scatter_nd(classes, example[records.TOP_K_PROBABILITIES], [num_classes])
    return dense / tf.reduce_sum(dense)

  full = tf.equal(tf.size(probabilities), num_classes)
  target = tf.cond(full, lambda: tf.reshape(probabilities, [num_classes]), from_top_k)
  if temperature == 1.0:
    return target
  tempered = tf.pow(target, 1.0 / temperature)  # 0 stays 0
  return tempered / tf.reduce_sum(tempered)


def _unbatched(dataset):
  return dataset.unbatch() if dataset.element_spec[0].shape.rank == 4 else dataset


def _num_classes(data, num_classes):
  if num_classes:
    return num_classes
  manifest = manifest_lib.load_manifest(data) if tf.io.gfile.isdir(data) else None
  if not manifest or not manifest.get("num_classes"):
    raise ValueError(f"pass num_classes: {data} has no manifest naming its classes")
  return manifest["num_classes"]


def count_examples(data):
  """Records in a data argument: the manifest's count when it has one, else a scan of the shards."""
  if tf.io.gfile.isdir(data):
    manifest = manifest_lib.load_manifest(data) or {}
    splits = manifest.get("splits", {})
    if len(splits) == 1:
      entry = next(iter(splits.values()))
      if "num_examples" in entry:
        return int(entry["num_examples"])
  return sum(1 for _ in ordered_records(resolve_shards(data)))
