"""Pure pieces of the training loop: Keras epoch tiling and the per-replica batch layout."""

import numpy as np
import pytest
import tensorflow as tf

from noisy_student.phases import train


def test_interleave_replicas_gives_each_replica_its_labeled_rows_first():
  labeled, ratio, replicas = 4, 3, 2
  rows = labeled * (1 + ratio)
  # Row r's target says where it came from: 0..3 labeled, 4..15 pseudo-labeled.
  images = np.arange(rows, dtype=np.float32).reshape(rows, 1, 1, 1)
  targets = np.arange(rows, dtype=np.float32)[:, None]
  dataset = tf.data.Dataset.from_tensors((images, targets))
  _, got = next(iter(train.interleave_replicas(dataset, labeled, replicas)))
  got = got.numpy()[:, 0]
  per_replica = np.split(got, replicas)
  # Replica k: its labeled_rows/replicas labeled rows, then its share of the pseudo-labeled rows.
  np.testing.assert_array_equal(per_replica[0], [0, 1, 4, 5, 6, 7, 8, 9])
  np.testing.assert_array_equal(per_replica[1], [2, 3, 10, 11, 12, 13, 14, 15])


def test_pad_crop_defaults_to_small_image():
  config = train.TrainConfig(train_steps=1, small_image=True)
  assert train.uses_pad_crop(config)
  assert not train.uses_pad_crop(train.TrainConfig(train_steps=1, small_image=True,
                                                   pad_crop=False))
  assert train.uses_pad_crop(train.TrainConfig(train_steps=1, pad_crop=True))
  with pytest.raises(ValueError, match="exactly one"):
    train.TrainConfig()
