"""A semi-supervised split of converted data: N labeled images per class, optionally V per class
held out for validation, the rest unlabeled.

For benchmarks and demos that take a fully labeled set (Fashion-MNIST, SVHN) and hide most labels.
The "unlabeled" shards keep their true labels so that pseudo-label accuracy can be reported; no
phase reads labels from unlabeled data (predict and filter use image bytes and keys only).
"""

import copy
import os

import numpy as np
import tensorflow as tf

from data import manifest as manifest_lib
from data import pipeline
from data import records


def _labels(shards):
  spec = {records.LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
  rows = pipeline.ordered_records(shards).map(
      lambda r: tf.io.parse_single_example(r, spec)[records.LABEL])
  return np.fromiter((int(v) for v in rows.as_numpy_iterator()), np.int64)


def choose_labeled(labels, per_class, seed, exclude=()):
  """Indices of `per_class` examples of each class, drawn without replacement with `seed`,
  never one of the indices in `exclude`.

  Raises:
    ValueError: when a class has fewer than `per_class` examples or a record has no label.
  """
  if (labels < 0).any():
    raise ValueError(f"{int((labels < 0).sum())} records have no label; cannot split by class")
  rng = np.random.default_rng(seed)
  chosen = []
  excluded = np.zeros(len(labels), bool)
  excluded[np.asarray(exclude, np.int64)] = True
  for c in np.unique(labels):
    members = np.flatnonzero((labels == c) & ~excluded)
    if len(members) < per_class:
      raise ValueError(f"class {c} has {len(members)} examples left, fewer than {per_class} "
                       "(--labeled_per_class, --validation_per_class)")
    chosen.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(chosen))


def _write(shards, keep, output_dir, split, num_shards, source_manifest, labels):
  tf.io.gfile.makedirs(output_dir)
  # Kept record k goes to shard k % num_shards: shard sizes differ by at most one.
  target = np.full(len(labels), -1)
  target[keep] = np.arange(len(keep)) % num_shards
  names = [records.shard_name(split, i, num_shards) for i in range(num_shards)]
  finals = [os.path.join(output_dir, name) for name in names]
  temporaries = [records.temporary_path(path) for path in finals]
  writers = [tf.io.TFRecordWriter(path) for path in temporaries]
  for i, serialized in enumerate(pipeline.ordered_records(shards).as_numpy_iterator()):
    if target[i] >= 0:
      writers[target[i]].write(serialized)
  for writer, temporary, final in zip(writers, temporaries, finals):
    writer.close()
    tf.io.gfile.rename(temporary, final, overwrite=True)
  entry = copy.deepcopy(next(iter(source_manifest["splits"].values())))
  entry.update(num_examples=int(len(keep)), shards=names, skipped=[], num_skipped=0,
               class_counts=np.bincount(labels[keep], minlength=source_manifest["num_classes"])
               .tolist())
  manifest = {"class_names": source_manifest["class_names"],
              "num_classes": source_manifest["num_classes"], "splits": {split: entry}}
  manifest_lib.save_manifest(output_dir, manifest)
  return manifest


def split_labeled(data, output_dir, *, per_class, seed=0, num_shards=4, validation_per_class=0):
  """Writes `<output_dir>/labeled` (per_class per class), `<output_dir>/validation`
  (validation_per_class per class, when > 0) and `<output_dir>/unlabeled` (the rest); with
  per_class None every image outside the validation split is labeled and there is no unlabeled
  pool (SVHN's train split with its dev split held out, as the reference's proc_svhn.py does).

  The labeled images are the same with or without a validation split (drawn first, with `seed`);
  the validation images are then drawn from the others (with `seed` + 1), so that they are in
  neither the labeled nor the unlabeled pool: choices made on them never see a trained-on image.

  Args:
    data: a converted, labeled split (directory with manifest.json or glob).
    output_dir: parent of the new directories.
    per_class: labeled examples kept per class; None: all but the validation split.
    seed: picks which examples are labeled and which validate.
    num_shards: shards of each output.
    validation_per_class: examples per class held out, labels kept, for validation.

  Returns:
    {"labeled": count, "unlabeled": count[, "validation": count]}. All keep the source's mean/std
    and class names.
  """
  shards = pipeline.resolve_shards(data)
  source = manifest_lib.load_manifest(data) if tf.io.gfile.isdir(data) else None
  if not source or not source.get("num_classes"):
    raise ValueError(f"{data!r} has no manifest with classes; convert it with labels first")
  labels = _labels(shards)
  everything = np.arange(len(labels))
  if per_class is None:
    if not validation_per_class:
      raise ValueError("give --labeled_per_class, --validation_per_class or both")
    validation = choose_labeled(labels, validation_per_class, seed + 1)
    parts = {"labeled": np.setdiff1d(everything, validation), "validation": validation}
  else:
    labeled = choose_labeled(labels, per_class, seed)
    parts = {"labeled": labeled}
    if validation_per_class:
      parts["validation"] = choose_labeled(labels, validation_per_class, seed + 1,
                                           exclude=labeled)
    parts["unlabeled"] = np.setdiff1d(everything, np.concatenate(list(parts.values())))
  for name, keep in parts.items():
    _write(shards, keep, os.path.join(output_dir, name), name, num_shards, source, labels)
  return {name: int(len(keep)) for name, keep in parts.items()}
