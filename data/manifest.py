"""`manifest.json`: what a directory of shards holds, one entry per split.

Layout (every split written by `data.convert` adds or replaces its own entry):

  {
    "class_names": ["0", "1", ...],       # index = the 0-based label; [] when nothing is labeled
    "num_classes": 10,
    "splits": {
      "train": {
        "num_examples": 60000,
        "labeled": true,
        "class_counts": [6000, ...],       # aligned with class_names; absent when unlabeled
        "image_size": [28, 28],            # [height, width] when every image has it, else null
        "mean": [72.9, 72.9, 72.9],        # per channel, 0-255 scale, over every pixel of the split
        "std": [90.0, 90.0, 90.0],
        "source": {"type": "idx", "input": "...", ...},
        "seed": 0,
        "shards": ["train-00000-of-00004.tfrecord", ...],   # relative to the directory
        "skipped": [{"key": "train/cat/x.jpg", "reason": "..."}],  # key names the file
        "num_skipped": 0
      }
    }
  }

Directories written by other phases may instead list their shards at the top level
(`"shards": [...]`); `split_shards` accepts both.
"""

import json
import os

import numpy as np
import tensorflow as tf

from data import records

MANIFEST_NAME = "manifest.json"


def manifest_path(directory):
  return os.path.join(directory, MANIFEST_NAME)


def load_manifest(directory):
  """Reads `<directory>/manifest.json`; returns None when there is none."""
  path = manifest_path(directory)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def class_names_for(data, num_classes):
  """The class names that `data`'s manifest gives for `num_classes` classes, for reports.

  `data` is a directory, a glob or a shard path; the manifest is the directory's, or the one
  beside the shards. None when there is none or it names a different number of classes.
  """
  data = str(data)
  directory = data if tf.io.gfile.isdir(data) else os.path.dirname(data)
  manifest = load_manifest(directory) if directory else None
  names = list((manifest or {}).get("class_names") or [])
  return names if len(names) == num_classes else None


def save_manifest(directory, manifest):
  records.write_text_atomically(manifest_path(directory), json.dumps(manifest, indent=1) + "\n")


def split_shards(manifest, directory, split=None):
  """Full shard paths that `manifest` lists for `split`.

  Args:
    manifest: a loaded manifest.
    directory: where it was read from; shard names are relative to it.
    split: the split to read. None picks the only split, and is an error when there are several.

  Returns:
    The shard paths, in the manifest's order.
  """
  if "shards" in manifest and split is None:
    names = manifest["shards"]
  else:
    splits = manifest.get("splits", {})
    if split is None:
      if len(splits) != 1:
        raise ValueError(f"{directory} holds splits {sorted(splits)}: pass split= or a glob such "
                         f"as {os.path.join(directory, '<split>-*.tfrecord')}")
      split = next(iter(splits))
    if split not in splits:
      raise ValueError(f"{manifest_path(directory)} has no split {split!r}; it has "
                       f"{sorted(splits)}")
    names = splits[split]["shards"]
  return [name if "://" in name or os.path.isabs(name) else os.path.join(directory, name)
          for name in names]


def merge_split(manifest, split, entry, class_names):
  """Returns `manifest` (or a new one) with `split` set to `entry`.

  Raises:
    ValueError: when the manifest already names different classes; labels of the two splits
      would then mean different things.
  """
  manifest = dict(manifest or {"class_names": [], "num_classes": 0, "splits": {}})
  old_names = manifest.get("class_names") or []
  if class_names and old_names and list(old_names) != list(class_names):
    raise ValueError(f"split {split!r} has classes {list(class_names)[:10]}..., but the manifest "
                     f"already has {list(old_names)[:10]}...; pass class_names= to convert")
  if class_names:
    manifest["class_names"] = list(class_names)
    manifest["num_classes"] = len(class_names)
  manifest["splits"] = dict(manifest.get("splits", {}), **{split: entry})
  return manifest


def load_normalization(directory, split=None):
  """(mean, std) per channel on the 0-255 scale, as the converter measured them.

  Args:
    directory: a directory written by `data.convert`.
    split: whose statistics to use; None means "train" when present, else the only split.
  """
  manifest = load_manifest(directory)
  if manifest is None:
    raise FileNotFoundError(f"no {MANIFEST_NAME} in {directory}")
  splits = manifest["splits"]
  if split is None:
    split = "train" if "train" in splits else next(iter(splits)) if len(splits) == 1 else None
  if split not in splits:
    raise ValueError(f"pick one of the splits {sorted(splits)} of {directory}")
  return tuple(splits[split]["mean"]), tuple(splits[split]["std"])


MIN_STD = 1e-3  # on the 0-255 scale: below it a channel counts as constant


class PixelStats:
  """Per-channel mean and std over every pixel, accumulated one image at a time.

  Sums are exact integers (int64 holds ImageNet's ~1.7e16 sum of squares with room to spare).
  """

  def __init__(self):
    self.count = 0
    self.sum = np.zeros(3, np.int64)
    self.sum_squares = np.zeros(3, np.int64)

  def add(self, count, channel_sum, channel_sum_squares):
    self.count += count
    self.sum += channel_sum
    self.sum_squares += channel_sum_squares

  def mean_std(self):
    if not self.count:
      return None, None
    mean = self.sum / self.count
    std = np.sqrt(np.maximum(self.sum_squares / self.count - mean ** 2, 0.0))
    # A channel that never varies (std 0) would normalise to NaN: it keeps its scale instead.
    std = np.where(std < MIN_STD, 1.0, std)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def image_statistics(pixels):
  """(pixel count, per-channel sum, per-channel sum of squares) of a uint8 image.

  Accepts HxW, HxWx1 (gray: its sums count for all three channels, as the readers decode it),
  HxWx3 and HxWx4 (alpha ignored).
  """
  pixels = np.asarray(pixels)
  channels = pixels.shape[-1] if pixels.ndim == 3 else 1
  values = pixels.reshape(-1, channels)[:, :3].astype(np.int64)
  total, squares = values.sum(axis=0), np.einsum("ij,ij->j", values, values)
  if channels == 1:
    total, squares = np.repeat(total, 3), np.repeat(squares, 3)
  return values.shape[0], total, squares
