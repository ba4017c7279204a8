"""Tiny labeled images that a small network learns in a few steps: the class is which of the
three channels is bright."""

import numpy as np

NUM_CLASSES = 3


def images(n, seed):
  """n 16x16x3 uint8 images and their labels (0-2), drawn with `seed`."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, n)
  pixels = rng.integers(0, 60, (n, 16, 16, 3)).astype(np.uint8)
  pixels[np.arange(n), :, :, labels] += 180
  return pixels, labels


def converted(root, split, n, seed, num_shards, unlabeled=False):
  """root/split: n such images converted (npz -> TFRecord shards) under `split`."""
  from data import convert  # pylint: disable=g-import-not-at-top  (TensorFlow, on first use)
  pixels, labels = images(n, seed)
  np.savez(root / f"{split}.npz", images=pixels, labels=labels)
  convert.convert("npz", str(root / f"{split}.npz"), str(root / split), split=split,
                  num_shards=num_shards, unlabeled=unlabeled)
  return root / split
