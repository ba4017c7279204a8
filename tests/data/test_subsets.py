"""data/subsets.py: labeled, validation and unlabeled splits of a converted labeled set."""

import json

import numpy as np
import pytest

from data import convert


def test_a_dev_split_alone_leaves_every_other_image_labeled(tmp_path):
  """SVHN's recipe: --validation_per_class without --labeled_per_class holds out a seeded,
  class-balanced dev split; every other image is labeled and there is no unlabeled pool."""
  from data import subsets  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 7)
  np.savez(tmp_path / "train.npz", images=rng.integers(0, 256, (21, 8, 8, 3), np.uint8),
           labels=labels)
  convert.convert("npz", str(tmp_path / "train.npz"), str(tmp_path / "all"), split="train",
                  num_shards=2)
  counts = subsets.split_labeled(str(tmp_path / "all"), str(tmp_path / "out"), per_class=None,
                                 validation_per_class=2, seed=4, num_shards=1)
  assert counts == {"labeled": 15, "validation": 6}
  assert not (tmp_path / "out" / "unlabeled").exists()
  keys = {name: set(_split_keys(tmp_path / "out" / name)) for name in counts}
  assert not keys["labeled"] & keys["validation"]
  assert len(keys["labeled"] | keys["validation"]) == 21
  manifest = json.loads((tmp_path / "out" / "validation" / "manifest.json").read_text())
  assert manifest["splits"]["validation"]["class_counts"] == [2, 2, 2]


def _split_keys(directory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {"image/key": tf.io.FixedLenFeature([], tf.string)}
  return [tf.io.parse_single_example(r, spec)["image/key"].numpy()
          for path in sorted(directory.glob("*.tfrecord"))
          for r in tf.data.TFRecordDataset(str(path))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choose_labeled_draws_per_class_from_outside_the_excluded_indices(seed):
  from data import subsets  # pylint: disable=g-import-not-at-top
  labels = np.repeat(np.arange(4), [9, 6, 12, 7])
  exclude = np.flatnonzero(np.arange(len(labels)) % 5 == 0)
  chosen = subsets.choose_labeled(labels, 3, seed, exclude=exclude)
  # Restated by counting: 3 of each class, sorted, distinct, none excluded, the same for a seed.
  assert np.bincount(labels[chosen]).tolist() == [3, 3, 3, 3]
  assert chosen.tolist() == sorted(set(chosen.tolist()))
  assert not set(chosen.tolist()) & set(exclude.tolist())
  np.testing.assert_array_equal(chosen, subsets.choose_labeled(labels, 3, seed, exclude=exclude))


def test_choose_labeled_refuses_a_short_class_and_unlabeled_records():
  from data import subsets  # pylint: disable=g-import-not-at-top
  labels = np.array([0, 0, 0, 1, 1])
  with pytest.raises(ValueError, match="class 1 has 1 examples left, fewer than 2"):
    subsets.choose_labeled(labels, 2, 0, exclude=[4])
  with pytest.raises(ValueError, match="1 records have no label"):
    subsets.choose_labeled(np.array([0, -1, 1]), 1, 0)
