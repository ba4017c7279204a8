"""Images/s of RandAugment(N=2, M=27) inside tf.data: `data.randaugment` vs Keras's layer.

    python benchmarks/randaugment_speed.py [--sizes 32 224] [--seconds 10] [--rounds 2]

Both run per image in `map(num_parallel_calls=AUTOTUNE)` on uint8 images, then `batch(128)`;
a few warm-up batches are dropped, then batches are counted for `--seconds`. The two
implementations alternate for `--rounds` rounds and each keeps its best round, which makes the
ratio robust to other load on a shared machine. Prints a markdown table.

Keras's `factor` is a strength in [0, 1] on each op's own scale, and every op samples its
strength uniformly in [0, factor]. We pass 27 / 30 = 0.9: M = 27 on the 0-30 scale the
RandAugment paper uses for ImageNet. Keras computes all 11 of its ops per layer whatever the
factor, so its speed hardly depends on this choice.
"""

import argparse
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import randaugment  # noqa: E402

NUM_LAYERS = 2
MAGNITUDE = 27
KERAS_FACTOR = MAGNITUDE / 30
BATCH_SIZE = 128
WARMUP_BATCHES = 3
POOL_SIZE = 512  # distinct source images, repeated

# Throughput of Model Garden's `augment.RandAugment(2, 27)` in the same setting on this kind of
# machine (shared/reference/environment.md); tf-models-official cannot be installed beside TF 2.21.
MODEL_GARDEN = {32: "2,700 to 4,060", 224: "about 490"}


def _ours(index, image):
  seed = tf.stack([tf.constant(0, tf.int64), index])
  return randaugment.randaugment(image, NUM_LAYERS, MAGNITUDE, seed=seed)


def _keras():
  layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=NUM_LAYERS,
                                   factor=KERAS_FACTOR, seed=0)
  return lambda index, image: layer(image)


def _images_per_second(augment, size, seconds):
  images = np.random.default_rng(size).integers(0, 256, (POOL_SIZE, size, size, 3), np.uint8)
  dataset = tf.data.Dataset.from_tensor_slices(images).repeat().enumerate()
  dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH_SIZE)
  batches = iter(dataset.prefetch(1))
  for _ in range(WARMUP_BATCHES):
    next(batches)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(batches)
    count += 1
  return count * BATCH_SIZE / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
  parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per round")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()

  print("| image size | ours (img/s) | keras.layers.RandAugment (img/s) | ours / Keras "
        "| Model Garden (img/s) |")
  print("|---|---|---|---|---|")
  for size in args.sizes:
    best = {"ours": 0.0, "keras": 0.0}
    for _ in range(args.rounds):
      for name, augment in (("ours", _ours), ("keras", _keras())):
        best[name] = max(best[name], _images_per_second(augment, size, args.seconds))
    print(f"| {size}x{size} | {best['ours']:,.0f} | {best['keras']:,.0f} "
          f"| {best['ours'] / best['keras']:.1f}x | {MODEL_GARDEN.get(size, '-')} |", flush=True)


if __name__ == "__main__":
  main()
