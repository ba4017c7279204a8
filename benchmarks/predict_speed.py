"""Predict end to end (read shards -> decode -> infer -> write prediction shards) against raw
model inference on in-memory tensors, in one run, same model and batch size. Goal: >= 0.9.

  python benchmarks/predict_speed.py [--images 65536] [--image_size 32] [--batch_size 256]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnet  # noqa: E402
from data import convert  # noqa: E402
from data import preprocess  # noqa: E402
from noisy_student import predict  # noqa: E402


def raw_rate(model, images, batch_size):
  infer = tf.function(lambda x: model(x, training=False))
  infer(images[:batch_size])
  start = time.perf_counter()
  for i in range(0, len(images), batch_size):
    infer(images[i:i + batch_size]).numpy()
  return len(images) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=65536)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--shards", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--width", type=float, default=0.5, help="B0's width coefficient")
  parser.add_argument("--depth", type=float, default=0.5, help="B0's depth coefficient")
  args = parser.parse_args()
  root = tempfile.mkdtemp()
  try:
    rng = np.random.default_rng(0)
    size = args.image_size
    images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    np.savez(os.path.join(root, "unlabeled.npz"), images=images)
    convert.convert("npz", os.path.join(root, "unlabeled.npz"), os.path.join(root, "data"),
                    split="unlabeled", num_shards=args.shards, unlabeled=True)
    model = efficientnet.build_model("efficientnet-b0", 10, small_image=True,
                                     width_coefficient=args.width, depth_coefficient=args.depth)
    prep = preprocess.PreprocessConfig(image_size=size, small_image=True)
    normalized = ((images.astype(np.float32) - 127.5) / 64.0)
    config = predict.PredictConfig(batch_size=args.batch_size)
    raw, end_to_end = [], []
    for round_index in range(args.rounds):
      raw.append(raw_rate(model, tf.constant(normalized), args.batch_size))
      output = os.path.join(root, f"predict{round_index}")
      start = time.perf_counter()
      predict.predict_phase(model, os.path.join(root, "data"), output, prep, config)
      end_to_end.append(args.images / (time.perf_counter() - start))
    print(f"| {args.images} images {size}x{size}, batch {args.batch_size}, b0 small-image "
          f"w{args.width:g} d{args.depth:g} | raw inference {max(raw):,.0f} img/s | predict end to end "
          f"{max(end_to_end):,.0f} img/s | ratio {max(end_to_end) / max(raw):.2f} |")
  finally:
    shutil.rmtree(root)


if __name__ == "__main__":
  main()
