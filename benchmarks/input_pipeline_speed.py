"""Training input images/s at 32x32 vs what EfficientNet-B0 (small_image) trains on, in one run.

    python benchmarks/input_pipeline_speed.py [--seconds 15] [--rounds 2]

Input: the student's full stream, `pipeline.student_dataset` over `labeled_dataset` and
`pseudo_labeled_dataset` (soft targets) at unlabeled_batch_ratio 3 with 32 labeled rows, so 128
images a batch: TFRecord read, PNG decode, RandAugment(N=2, M=27), Cutout, pad-and-crop, flip,
normalise. The shards are synthetic smooth 32x32 RGB images (SVHN-like PNG sizes) written to a
temporary directory by `data.convert` (labeled) and `data.records` (filter-format pseudo labels).
Batches are counted for --seconds after a few warm-up batches.

Model: `efficientnet.build_model('efficientnet-b0', 10, small_image=True)`, `model.fit` on
in-memory float32 tensors, batch 128, a few steps after a warm-up fit; the standard B0 (which
downsamples 32x32 inputs much earlier) is timed too, for scale.

Input and model alternate for --rounds rounds and each keeps its best round, which makes the
ratio robust to other load on a shared machine. Prints a markdown table.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import efficientnet  # noqa: E402
from data import convert, decode, pipeline, preprocess, records  # noqa: E402

NUM_CLASSES = 10
IMAGE_SIZE = 32
LABELED_ROWS = 32
RATIO = 3
MODEL_BATCH = LABELED_ROWS * (1 + RATIO)
WARMUP_BATCHES = 5


def _smooth_images(count, seed):
  """Upsampled 6x6 noise plus a little pixel noise: compresses like small natural images."""
  rng = np.random.default_rng(seed)
  low = rng.integers(0, 256, (count, 6, 6, 3), dtype=np.uint8)
  images = np.stack([np.asarray(Image.fromarray(x).resize((IMAGE_SIZE, IMAGE_SIZE),
                                                          Image.BICUBIC)) for x in low])
  noise = rng.integers(-8, 9, images.shape)
  return np.clip(images.astype(int) + noise, 0, 255).astype(np.uint8)


def write_data(directory):
  """Labeled shards via data.convert and pseudo-labeled shards in the filter's format."""
  np.savez(os.path.join(directory, "labeled.npz"), images=_smooth_images(2048, 0),
           labels=np.arange(2048) % NUM_CLASSES)
  labeled = os.path.join(directory, "labeled")
  convert.convert("npz", os.path.join(directory, "labeled.npz"), labeled, split="train",
                  num_shards=8)
  rng = np.random.default_rng(1)
  images = _smooth_images(4096, 2)
  for shard in range(8):
    rows = []
    for i in range(shard, len(images), 8):
      probabilities = rng.dirichlet(np.ones(NUM_CLASSES))
      rows.append(records.make_example(
          key=f"unlabeled/{i}", image=decode.encode_png(images[i]),
          label=int(probabilities.argmax()), probabilities=probabilities,
          confidence=float(probabilities.max())))
    records.write_atomically(os.path.join(directory, f"pseudo-{shard:05d}-of-00008.tfrecord"),
                             rows)
  return labeled, os.path.join(directory, "pseudo-*.tfrecord")


def input_rate(labeled, pseudo, config, seconds):
  stream = pipeline.student_dataset(
      pipeline.labeled_dataset(labeled, config, seed=0),
      pipeline.pseudo_labeled_dataset(pseudo, config, num_classes=NUM_CLASSES, seed=1),
      LABELED_ROWS, RATIO)
  batches = iter(stream)
  for _ in range(WARMUP_BATCHES):
    next(batches)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    images, _ = next(batches)
    count += int(images.shape[0])
  return count / (time.perf_counter() - start)


def model_rate(steps, small_image=True):
  keras.backend.clear_session()
  keras.utils.set_random_seed(0)
  model = efficientnet.build_model("efficientnet-b0", NUM_CLASSES, small_image=small_image)
  model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(MODEL_BATCH * steps, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
  y = keras.utils.to_categorical(rng.integers(0, NUM_CLASSES, len(x)), NUM_CLASSES)
  model.fit(x[:MODEL_BATCH * 2], y[:MODEL_BATCH * 2], batch_size=MODEL_BATCH, verbose=0)
  start = time.perf_counter()
  model.fit(x, y, batch_size=MODEL_BATCH, epochs=1, verbose=0)
  return len(x) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=15.0, help="timed input seconds a round")
  parser.add_argument("--model_steps", type=int, default=8, help="timed model steps a round")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  full = preprocess.PreprocessConfig(IMAGE_SIZE, small_image=True, randaugment_layers=2,
                                     randaugment_magnitude=27, cutout=True)
  plain = preprocess.PreprocessConfig(IMAGE_SIZE, small_image=True)
  with tempfile.TemporaryDirectory() as directory:
    labeled, pseudo = write_data(directory)
    rates = {"full": [], "plain": [], "model": [], "standard": []}
    for _ in range(args.rounds):
      rates["full"].append(input_rate(labeled, pseudo, full, args.seconds))
      rates["model"].append(model_rate(args.model_steps))
      rates["plain"].append(input_rate(labeled, pseudo, plain, args.seconds))
      rates["standard"].append(model_rate(args.model_steps * 4, small_image=False))
  best = {name: max(values) for name, values in rates.items()}
  print(f"TF {tf.__version__}, keras {keras.__version__}, {os.cpu_count()} CPUs; best of "
        f"{args.rounds} rounds")
  print("| what | img/s | / model training |")
  print("|---|---|---|")
  print(f"| input: decode + RandAugment(2, 27) + Cutout + crop/flip, labeled + pseudo at ratio "
        f"{RATIO}, batch {MODEL_BATCH} | {best['full']:,.0f} | "
        f"{best['full'] / best['model']:.2f} |")
  print(f"| input: same streams, no RandAugment/Cutout | {best['plain']:,.0f} | "
        f"{best['plain'] / best['model']:.2f} |")
  print(f"| model: efficientnet-b0 small_image, `model.fit`, batch {MODEL_BATCH}, float32 | "
        f"{best['model']:,.0f} | 1.00 |")
  print(f"| for scale: efficientnet-b0 without small_image (stride-2 stages), same fit | "
        f"{best['standard']:,.0f} | {best['standard'] / best['model']:.2f} |")


if __name__ == "__main__":
  main()
