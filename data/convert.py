"""Converts image folders, IDX, SVHN .mat, .npz, tfds data and the reference's ImageNet TFRecords
(tensorflow/tpu imagenet_to_gcs.py) to the shared TFRecord format.

Output: `<output_dir>/<split>-SSSSS-of-NNNNN.tfrecord` shards (schema in `data.records`) and
`<output_dir>/manifest.json` (layout in `data.manifest`), merged per split so train and test can
share a directory. Records are shuffled across shards with `seed`. Images are decoded once
(threads) to validate them and measure per-channel mean/std; undecodable files are skipped and
listed, never fatal. Each shard appears under its final name only when complete.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import gzip
import io
import itertools
import os
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from data import decode
from data import manifest as manifest_lib
from data import records

SOURCES = ("folder", "idx", "svhn_mat", "npz", "tfds", "tfrecord")
_IDX_PREFIXES = {"train": "train", "t10k": "t10k", "test": "t10k"}
_PROGRESS_SECONDS = 10.0


@dataclasses.dataclass
class _Source:
  """What a source yields: items (key, label or None, ref) and `load(ref)` -> bytes or array."""
  items: list
  load: Callable
  class_names: list
  description: dict
  skipped: list = dataclasses.field(default_factory=list)


def convert(source, input_path, output_dir, *, split, num_shards, unlabeled=False, seed=0,
            num_workers=None, limit=None, class_names=None):
  """Writes `split` of a source as TFRecord shards plus a merged manifest.json.

  Args:
    source: one of SOURCES.
      "folder": `input_path` is a directory. Labeled: one sub-folder per class, classes in
        sorted name order, images anywhere below them (keys `<split>/<class>/<relative path>`).
        Unlabeled: any tree of images (keys `<split>/<relative path>`). Hidden files are ignored.
      "idx": `input_path` is a directory of MNIST-layout gzip (or plain) IDX files
        `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]`; split "train"
        reads prefix train, "t10k" or "test" reads t10k. Keys `<split>/<index>`.
      "svhn_mat": `input_path` is an SVHN `.mat` file (`X` HxWx3xN, `y` with 10 meaning digit 0,
        stored as 0).
      "npz": `input_path` is an .npz with `images` uint8 [N,H,W] or [N,H,W,C], optional `labels`
        (0-based ints) and optional `class_names`.
      "tfds": `input_path` is a tensorflow-datasets name (e.g. "mnist"); needs the package.
      "tfrecord": the reference's ImageNet shards (tensorflow/tpu imagenet_to_gcs.py):
        `input_path` is their directory (its `<split>-*` files are read, e.g. train-00000-of-01024
        or validation-00000-of-00128) or a glob. `image/encoded` is kept as it is,
        `image/class/label` (1-based, 1..1000) becomes label - 1, `image/class/synset` names
        the classes, `image/filename` makes the key (`<split>/<filename>`).
    input_path: see `source`; local or gs://.
    output_dir: where shards and manifest.json go (created when missing).
    split: split name, used as the shard prefix and manifest key; for "idx" also picks files.
    num_shards: number of shards for this split.
    unlabeled: drop labels (the records carry no `image/class/label`).
    seed: seeds the shuffle of records across shards.
    num_workers: decoding/encoding threads; None uses every CPU.
    limit: convert only the first `limit` images of the source (file order for folders, index
      order for arrays), e.g. for quick tests.
    class_names: overrides the class names (folder: which sub-folders, in label order).

  Returns:
    The manifest dict that was written.

  Raises:
    FileNotFoundError / ValueError: missing or empty input, unknown source, inconsistent
      classes; raised before anything is written.
  """
  if source not in SOURCES:
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
  if "/" in split or not split:
    raise ValueError(f"bad split name {split!r}")
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  loader = {"folder": _folder_source, "idx": _idx_source, "svhn_mat": _svhn_source,
            "npz": _npz_source, "tfds": _tfds_source, "tfrecord": _tfrecord_source}[source]
  src = loader(input_path, split=split, unlabeled=unlabeled, class_names=class_names)
  items = src.items[:limit]
  if not items:
    raise ValueError(f"no images to convert in {input_path} (split {split!r})")
  labeled = not unlabeled and all(label is not None for _, label, _ in items)
  names = src.class_names if labeled else None
  old = manifest_lib.load_manifest(output_dir) if tf.io.gfile.isdir(output_dir) else None
  manifest_lib.merge_split(old, split, {}, names)  # fails early on clashing class names

  tf.io.gfile.makedirs(output_dir)
  order = np.random.default_rng(seed).permutation(len(items))
  bounds = np.linspace(0, len(items), num_shards + 1).round().astype(int)
  tally = _Tally(split, len(items), len(names or []), labeled)
  tally.skipped.extend(src.skipped)
  work = functools.partial(_encode, src.load, labeled)
  results = _ordered_map(work, (items[i] for i in order), num_workers or os.cpu_count() or 1)
  shard_names = []
  for index in range(num_shards):
    shard_names.append(records.shard_name(split, index, num_shards))
    rows = (tally.add(next(results)) for _ in range(bounds[index + 1] - bounds[index]))
    records.write_atomically(os.path.join(output_dir, shard_names[-1]),
                             (row for row in rows if row is not None))
  tally.log(final=True)
  if tally.kept == 0:
    # Every image failed: an error, not a data set of empty shards that fails later, elsewhere.
    for name in shard_names:
      tf.io.gfile.remove(os.path.join(output_dir, name))
    reasons = "; ".join(f"{s['key']}: {s['reason']}" for s in tally.skipped[:3])
    raise ValueError(f"none of the {len(items)} images of {input_path} (split {split!r}) could "
                     f"be converted ({reasons}); nothing was written")

  entry = tally.entry(src.description, seed, shard_names)
  manifest = manifest_lib.merge_split(old, split, entry, names)
  manifest_lib.save_manifest(output_dir, manifest)
  stale = set((old or {}).get("splits", {}).get(split, {}).get("shards", [])) - set(shard_names)
  for name in stale:
    if tf.io.gfile.exists(os.path.join(output_dir, name)):
      tf.io.gfile.remove(os.path.join(output_dir, name))
  return manifest


def _encode(load, labeled, item):
  """One item -> ("ok", record, label, (h, w), stats) or ("skip", key, reason)."""
  key, label, ref = item
  try:
    payload = load(ref)
    if isinstance(payload, bytes):
      pixels, encoded = decode.load_image_bytes(payload)
    else:
      pixels, encoded = payload, decode.encode_png(payload)
  except Exception as e:  # a bad image must never stop a long conversion; it is listed instead
    return ("skip", key, str(e) if isinstance(e, decode.UndecodableImage)
            else f"{type(e).__name__}: {e}")
  record = records.make_example(key=key, image=encoded, label=label if labeled else None)
  return ("ok", record, label, pixels.shape[:2], manifest_lib.image_statistics(pixels))


def _ordered_map(fn, items, num_workers):
  """map(fn, items) on threads, in order, with a bounded number of items in flight."""
  items = iter(items)
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    window = itertools.islice(items, 64 * num_workers)
    pending = collections.deque(pool.submit(fn, x) for x in window)
    while pending:
      result = pending.popleft().result()
      for x in itertools.islice(items, 1):
        pending.append(pool.submit(fn, x))
      yield result


class _Tally:
  """Counts, sizes, pixel statistics and skips of one split, plus the progress line."""

  def __init__(self, split, total, num_classes, labeled):
    self.split, self.total, self.labeled = split, total, labeled
    self.class_counts = [0] * num_classes
    self.sizes = set()
    self.stats = manifest_lib.PixelStats()
    self.skipped = []
    self.done = self.kept = 0
    self.start = self.last_log = time.monotonic()

  def add(self, result):
    """Records one `_encode` result; returns the serialized record, or None when skipped."""
    self.done += 1
    if time.monotonic() - self.last_log > _PROGRESS_SECONDS:
      self.log()
    if result[0] == "skip":
      self.skipped.append({"key": result[1], "reason": result[2]})
      return None
    _, record, label, size, stats = result
    self.kept += 1
    if self.labeled:
      self.class_counts[label] += 1
    self.sizes.add(tuple(int(v) for v in size))
    self.stats.add(*stats)
    return record

  def log(self, final=False):
    self.last_log = time.monotonic()
    rate = self.done / max(self.last_log - self.start, 1e-9)
    logging.info("convert %s: %d/%d images, %.0f images/s, %d skipped%s", self.split, self.done,
                 self.total, rate, len(self.skipped), " (done)" if final else "")

  def entry(self, description, seed, shard_names):
    mean, std = self.stats.mean_std()
    entry = {"num_examples": self.kept, "labeled": self.labeled,
             "image_size": list(next(iter(self.sizes))) if len(self.sizes) == 1 else None,
             "mean": mean, "std": std, "source": description, "seed": seed,
             "shards": shard_names, "num_skipped": len(self.skipped), "skipped": self.skipped}
    if self.labeled:
      entry["class_counts"] = self.class_counts
    return entry


def _folder_source(input_path, *, split, unlabeled, class_names):
  if not tf.io.gfile.isdir(input_path):
    raise FileNotFoundError(f"input directory {input_path} does not exist")
  files = []
  for root, dirs, names in tf.io.gfile.walk(input_path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    rel_root = os.path.relpath(root, input_path)
    files.extend(os.path.normpath(os.path.join(rel_root, n)).replace(os.sep, "/")
                 for n in names if not n.startswith("."))
  files.sort()
  if not files:
    raise ValueError(f"input directory {input_path} holds no files")
  description = {"type": "folder", "input": input_path}

  def load(relative_path):
    with tf.io.gfile.GFile(os.path.join(input_path, relative_path), "rb") as f:
      return f.read()

  if unlabeled:
    return _Source([(f"{split}/{f}", None, f) for f in files], load, [], description)
  folders = sorted({f.split("/")[0] for f in files if "/" in f})
  names = list(class_names or folders)
  if not names:
    raise ValueError(f"{input_path} has no class sub-folders: put each class's images in a "
                     f"sub-folder named after it, or convert a plain tree of images with "
                     f"--unlabeled")
  index = {name: i for i, name in enumerate(names)}
  unknown = sorted(set(folders) - set(index))
  if unknown:
    raise ValueError(f"sub-folders {unknown[:5]} of {input_path} are not in class_names")
  items = [(f"{split}/{f}", index[f.split("/")[0]], f) for f in files if "/" in f]
  skipped = [{"key": f"{split}/{f}", "reason": "not inside a class folder"}
             for f in files if "/" not in f]
  return _Source(items, load, names, description, skipped)


def _read_idx(path):
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  if path.endswith(".gz"):
    data = gzip.decompress(data)
  if data[:2] != b"\0\0" or data[2] != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file")
  ndim = data[3]
  shape = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _folder_hint(input_path):
  """How to read `input_path` when it is a folder of images rather than what --source says."""
  if not tf.io.gfile.isdir(input_path) or any(
      "-ubyte" in name for name in tf.io.gfile.listdir(input_path)):
    return ""
  return ("; for a folder of images (one sub-folder per class, or any tree with --unlabeled) "
          "use --source=folder")


def _idx_source(input_path, *, split, unlabeled, class_names):
  if split not in _IDX_PREFIXES:
    raise ValueError(f"IDX split must be one of {sorted(_IDX_PREFIXES)}, got {split!r}")
  arrays = {}
  for kind, suffix in (("images", "idx3"), ("labels", "idx1")):
    base = os.path.join(input_path, f"{_IDX_PREFIXES[split]}-{kind}-{suffix}-ubyte")
    found = [p for p in (base + ".gz", base) if tf.io.gfile.exists(p)]
    if not found:
      raise FileNotFoundError(f"--source=idx (the default) reads MNIST-layout IDX files and "
                              f"{input_path} has no {os.path.basename(base)}[.gz]"
                              f"{_folder_hint(input_path)}")
    arrays[kind] = _read_idx(found[0])
  description = {"type": "idx", "input": input_path, "files_prefix": _IDX_PREFIXES[split]}
  return _array_source(arrays["images"], None if unlabeled else arrays["labels"], split,
                       class_names, description)


def _svhn_source(input_path, *, split, unlabeled, class_names):
  import scipy.io  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(input_path, "rb") as f:
    mat = scipy.io.loadmat(io.BytesIO(f.read()))
  images = np.transpose(mat["X"], (3, 0, 1, 2))
  labels = None if unlabeled else mat["y"].reshape(-1).astype(np.int64) % 10
  description = {"type": "svhn_mat", "input": input_path,
                 "labels": "SVHN label 10 (digit 0) stored as 0; others unchanged"}
  return _array_source(images, labels, split, class_names or [str(d) for d in range(10)],
                       description)


def _npz_source(input_path, *, split, unlabeled, class_names):
  with tf.io.gfile.GFile(input_path, "rb") as f:
    npz = np.load(io.BytesIO(f.read()), allow_pickle=False)
    arrays = {k: npz[k] for k in npz.files}
  if "images" not in arrays:
    raise ValueError(f"{input_path} has no 'images' array (it has {sorted(arrays)})")
  labels = None if unlabeled else arrays.get("labels")
  if class_names is None and "class_names" in arrays:
    class_names = [str(n) for n in arrays["class_names"]]
  return _array_source(arrays["images"], labels, split, class_names,
                       {"type": "npz", "input": input_path})


def _tfds_source(input_path, *, split, unlabeled, class_names):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("source 'tfds' needs tensorflow-datasets: pip install "
                      "tensorflow-datasets") from e
  builder = tfds.builder(input_path)
  builder.download_and_prepare()
  dataset = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  # Encoded bytes are kept in memory: fine for MNIST/CIFAR/SVHN-sized sets, not for ImageNet.
  rows = [(bytes(r["image"]), r.get("label")) for r in tfds.as_numpy(dataset)]
  features = builder.info.features
  label_feature = features["label"] if "label" in features.keys() else None
  names = list(class_names or getattr(label_feature, "names", None) or [])
  has_labels = not unlabeled and rows and rows[0][1] is not None
  if has_labels and not names:
    names = [str(i) for i in range(int(max(int(label) for _, label in rows)) + 1)]
  items = [(f"{split}/{i}", int(label) if has_labels else None, i)
           for i, (_, label) in enumerate(rows)]
  return _Source(items, lambda i: rows[i][0], names, {"type": "tfds", "name": input_path})


# The reference's ImageNet shards (tensorflow/tpu tools/datasets/imagenet_to_gcs.py): its
# image/class/label is 1-based (1..1000; TF-slim kept 0 for a background class).
REFERENCE_LABEL_OFFSET = 1
_TFRECORD_HEADER, _TFRECORD_FOOTER = 12, 4  # uint64 length + uint32 CRC; uint32 CRC
_REFERENCE_INDEX_FEATURES = {
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/class/synset": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _tfrecord_source(input_path, *, split, unlabeled, class_names):
  shards = _reference_shards(input_path, split)
  rows, skipped = [], []  # rows: (shard, index, (path, offset, length), label, synset, filename)
  for path in shards:
    rows.extend(_index_reference_shard(path, split, skipped))
  names = list(class_names or [])
  labels = [] if unlabeled else [_reference_label(row, len(names)) for row in rows]
  if labels and not names:
    synsets = {}
    for (_, _, _, _, synset, _), label in zip(rows, labels):
      if synset and synsets.setdefault(label, synset) != synset:
        raise ValueError(f"{input_path}: label {label + REFERENCE_LABEL_OFFSET} has two synsets, "
                         f"{synsets[label]} and {synset}")
    names = [synsets.get(i, str(i)) for i in range(max(labels) + 1)]
  filenames = [row[5] for row in rows]
  by_name = all(filenames) and len(set(filenames)) == len(filenames)
  keys = [f"{split}/{row[5]}" if by_name else f"{split}/{os.path.basename(row[0])}/{row[1]}"
          for row in rows]
  items = [(key, labels[i] if labels else None, row[2]) for i, (key, row) in
           enumerate(zip(keys, rows))]
  description = {"type": "tfrecord", "input": input_path, "num_input_shards": len(shards),
                 "label_offset": 0 if unlabeled else REFERENCE_LABEL_OFFSET,
                 "labels": "unlabeled" if unlabeled else
                 "image/class/label is 1-based (tensorflow/tpu imagenet_to_gcs.py); stored as "
                 "label - 1", "keys": "image/filename" if by_name else "shard/index"}
  return _Source(items, _read_reference_image, names, description, skipped)


def _reference_shards(input_path, split):
  """A directory's `<split>-*` files (the reference's train-*, validation-*), or a glob's."""
  if tf.io.gfile.isdir(input_path):
    shards = records.without_hidden(tf.io.gfile.glob(os.path.join(input_path, f"{split}-*")))
    if not shards:
      raise FileNotFoundError(
          f"no {split}-* shards in {input_path} (imagenet_to_gcs.py writes train-00000-of-01024 "
          "and validation-00000-of-00128): pass --split=train or validation, or a glob")
  else:
    shards = records.without_hidden(tf.io.gfile.glob(input_path))
    if not shards:
      raise FileNotFoundError(f"no TFRecord shards match {input_path}")
  return sorted(shards)


def _index_reference_shard(path, split, skipped):
  """(path, index, (path, data offset, length), raw label, synset, filename) of each record of an
  uncompressed TFRecord file, read once without keeping the images (they are read again by
  offset when converted). A file damaged part-way gives its records up to the damage, listed."""
  dataset = tf.data.TFRecordDataset(path).map(
      lambda r: (tf.strings.length(r, unit="BYTE"),
                 tf.io.parse_single_example(r, _REFERENCE_INDEX_FEATURES))).batch(1024)
  rows, offset = [], 0
  try:
    for lengths, features in dataset:
      for length, label, synset, filename in zip(
          lengths.numpy(), features["image/class/label"].numpy(),
          features["image/class/synset"].numpy(), features["image/filename"].numpy()):
        rows.append((path, len(rows), (path, offset + _TFRECORD_HEADER, int(length)), int(label),
                     synset.decode(), filename.decode()))
        offset += _TFRECORD_HEADER + int(length) + _TFRECORD_FOOTER
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    skipped.append({"key": f"{split}/{os.path.basename(path)}",
                    "reason": f"damaged after {len(rows)} records: {e.message.splitlines()[0]}"})
  if rows:  # a compressed file's offsets would point into compressed bytes
    with tf.io.gfile.GFile(path, "rb") as f:
      if int.from_bytes(f.read(8), "little") != rows[0][2][2]:
        raise ValueError(f"{path} is not an uncompressed TFRecord file")
  return rows


def _reference_label(row, num_names):
  """The 0-based label of an index row; a label that is not 1-based is an error naming it."""
  path, index, _, raw, _, _ = row
  where = f"record {index} of {path}"
  if raw == -1:
    raise ValueError(f"{where} has no image/class/label; pass --unlabeled for unlabeled shards")
  if raw < REFERENCE_LABEL_OFFSET:
    raise ValueError(f"{where}: image/class/label {raw}; the reference's shards "
                     "(imagenet_to_gcs.py) are 1-based (1..1000), and a 0 would have no class")
  label = raw - REFERENCE_LABEL_OFFSET
  if num_names and label >= num_names:
    raise ValueError(f"{where}: image/class/label {raw}, but only {num_names} class names")
  return label


def _read_reference_image(ref):
  path, offset, length = ref
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(offset)
    data = f.read(length)
  feature = tf.train.Example.FromString(data).features.feature
  if "image/encoded" not in feature:
    raise ValueError("the record has no image/encoded")
  return feature["image/encoded"].bytes_list.value[0]


def _array_source(images, labels, split, class_names, description):
  # Checked here, before any shard is written: every image would otherwise be skipped.
  if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
      images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
    raise ValueError(f"{description.get('input', '')}: images must be uint8 [N,H,W] or [N,H,W,C] "
                     f"with C 1, 3 or 4, got {images.dtype} {images.shape}")
  if labels is not None:
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(images):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) and labels.min() < 0:
      raise ValueError("labels must be 0-based (found a negative label)")
    count = int(labels.max()) + 1 if len(labels) else 0
    class_names = list(class_names or [str(i) for i in range(count)])
    if count > len(class_names):
      raise ValueError(f"label {count - 1} but only {len(class_names)} class names")
  items = [(f"{split}/{i}", None if labels is None else int(labels[i]), i)
           for i in range(len(images))]
  return _Source(items, images.__getitem__, list(class_names or []), description)
