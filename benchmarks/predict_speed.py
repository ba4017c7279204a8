"""Predict end to end (read shards -> decode -> infer -> write prediction shards) against raw
model inference on in-memory tensors, in one run, same model, inference function and batch size.
Goal: >= 0.9.

Two input kinds:
- image size >= 128 (default 224): the standard B0 on JPEGs of 1.15x the size (smooth random
  scenes, quality 90), centre-cropped and resized with the ImageNet eval preprocessing: the
  ImageNet recipe's predict (the paper's teachers run at 600-800 pixels, a still smaller decode
  share);
- image size < 128: the small-image B0 on random RGB PNGs of that size, where decoding is
  cheapest per image but inference is too, so decode takes its largest share.

  python benchmarks/predict_speed.py [--images 4096] [--rounds 2]
  python benchmarks/predict_speed.py --image_size 32 --width 0.5 --depth 0.5 --images 65536 \
      --batch_size 256
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
from data import pipeline  # noqa: E402
from data import preprocess  # noqa: E402
from noisy_student.phases import predict  # noqa: E402


def raw_rate(model, images, batch_size):
  """(images/s of predict's inference function on in-memory tensors, seconds of its one trace).

  The trace is timed as the first call less an average call: predict pays it once per run,
  so it weighs on a short benchmark far more than on a real run over millions of images.
  """
  infer = predict.inference_step(model, predict.PredictConfig(batch_size=batch_size))
  start = time.perf_counter()
  infer(images[:batch_size])
  first_call = time.perf_counter() - start
  start = time.perf_counter()
  for i in range(0, len(images), batch_size):
    infer(images[i:i + batch_size])
  seconds = time.perf_counter() - start
  return len(images) / seconds, first_call - seconds * batch_size / len(images)


def write_inputs(root, data, count, size, shards, small):
  """`count` unlabeled images as shards in `data`: random PNGs, or smooth JPEG scenes."""
  rng = np.random.default_rng(0)
  if small:
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    np.savez(os.path.join(root, "unlabeled.npz"), images=images)
    convert.convert("npz", os.path.join(root, "unlabeled.npz"), data, split="unlabeled",
                    num_shards=shards, unlabeled=True)
    return
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, "jpeg")
  os.makedirs(folder)
  side = round(size * 1.15)
  for i in range(count):
    # Low-frequency colour fields plus grain: JPEG sizes of photographs, not of white noise.
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
  convert.convert("folder", folder, data, split="unlabeled", num_shards=shards, unlabeled=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=4096)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--shards", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--width", type=float, default=1.0, help="B0's width coefficient")
  parser.add_argument("--depth", type=float, default=1.0, help="B0's depth coefficient")
  args = parser.parse_args()
  root = tempfile.mkdtemp()
  try:
    size = args.image_size
    small = size < 128
    data = os.path.join(root, "data")
    write_inputs(root, data, args.images, size, args.shards, small)
    model = efficientnet.build_model("efficientnet-b0", 10, image_size=size, small_image=small,
                                     width_coefficient=args.width, depth_coefficient=args.depth)
    prep = preprocess.PreprocessConfig(image_size=size, small_image=small)
    # Raw inference gets the very tensors predict feeds the model, already in memory.
    normalized = np.concatenate([images.numpy() for images, _ in pipeline.eval_dataset(
        data, prep, batch_size=args.batch_size)])
    config = predict.PredictConfig(batch_size=args.batch_size)
    raw, end_to_end, steady = [], [], []
    for round_index in range(args.rounds):
      rate, trace = raw_rate(model, tf.constant(normalized), args.batch_size)
      raw.append(rate)
      output = os.path.join(root, f"predict{round_index}")
      start = time.perf_counter()
      predict.predict_phase(model, data, output, prep, config)
      seconds = time.perf_counter() - start
      end_to_end.append(args.images / seconds)
      steady.append(args.images / (seconds - trace))
      print(f"round {round_index}: raw {raw[-1]:,.0f} img/s, end to end {end_to_end[-1]:,.0f} "
            f"img/s (ratio {end_to_end[-1] / raw[-1]:.2f}), less the {trace:.1f} s trace "
            f"{steady[-1]:,.0f} img/s (ratio {steady[-1] / raw[-1]:.2f})", flush=True)
    kind = "small-image, PNG" if small else "JPEG"
    print(f"| {args.images} images {size}x{size} ({kind}), batch {args.batch_size}, b0 "
          f"w{args.width:g} d{args.depth:g} | raw inference {max(raw):,.0f} img/s | predict end "
          f"to end {max(end_to_end):,.0f} img/s | ratio {max(end_to_end) / max(raw):.2f} | less "
          f"the "
          f"one trace {max(steady):,.0f} img/s | ratio {max(steady) / max(raw):.2f} |")
  finally:
    shutil.rmtree(root)


if __name__ == "__main__":
  main()
