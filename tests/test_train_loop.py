"""Pure pieces of the training loop: Keras epoch tiling and the per-replica batch layout."""

import numpy as np
import pytest
import tensorflow as tf

from noisy_student.phases import train
from noisy_student.training import plan


@pytest.mark.parametrize("total,per_epoch,expected", [
    (1000, 31.25, (31, 33, 8)),     # 32 epochs of 31 steps and a last one of 8: exactly 1000
    (313, 15.6, (16, 20, 9)),       # a prime total is run as asked, not rounded up to 320
    (469, 312.79, (313, 2, 156)),   # the L2 fine-tune: 1.5 epochs, not 626 steps
    (12, 100.0, (12, 1, 12)),       # shorter than one data epoch
    (5000, 4000.0, (1000, 5, 1000)),  # capped at MAX_STEPS_PER_KERAS_EPOCH
    (57, 3.8, (4, 15, 1)),          # --epochs=15 of 3.8 steps: Keras counts 15 epochs
])
def test_keras_epochs_tile_exactly_the_steps_asked(total, per_epoch, expected):
  tiling = plan.keras_epochs(total, per_epoch)
  assert (tiling.steps, tiling.count, tiling.last) == expected
  # Restated: every Keras epoch but the last is one data epoch in whole steps, the sum is exact.
  assert (tiling.count - 1) * tiling.steps + tiling.last == total
  assert 1 <= tiling.last <= tiling.steps <= max(1, round(per_epoch))


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
