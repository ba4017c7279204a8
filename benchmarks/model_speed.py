"""Ours vs keras.applications.EfficientNetB0 (weights=None) on the same input, in one run.

Measures training images/s at 32x32 (`model.fit` on in-memory tensors, batch 128) and inference
images/s at 32x32 (batch 256) and 224x224 (batch 32), float32. Runs alternate between the two models
and report the median, because the machines are shared and noisy: compare the ratio column.

  python benchmarks/model_speed.py [--repeats 3]
"""

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import efficientnet  # noqa: E402

NUM_CLASSES = 10


def build(which, size):
  if which == "ours":
    return efficientnet.build_model("efficientnet-b0", NUM_CLASSES)
  return keras.applications.EfficientNetB0(weights=None, input_shape=(size, size, 3),
                                           classes=NUM_CLASSES, classifier_activation=None)


def train_rate(model, size, batch, steps):
  x = np.random.default_rng(0).uniform(0, 1, (batch * steps, size, size, 3)).astype("float32")
  y = np.random.default_rng(1).integers(0, NUM_CLASSES, batch * steps)
  model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=1, verbose=0)  # trace, warm up
  start = time.perf_counter()
  model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
  return batch * steps / (time.perf_counter() - start)


def inference_rate(model, size, batch, steps):
  x = np.random.default_rng(0).uniform(0, 1, (batch, size, size, 3)).astype("float32")
  model.predict_on_batch(x)  # trace
  start = time.perf_counter()
  for _ in range(steps):
    model.predict_on_batch(x)
  return batch * steps / (time.perf_counter() - start)


CASES = (
    ("training, 32x32, batch 128", 32, lambda m: train_rate(m, 32, 128, 8)),
    ("inference, 32x32, batch 256", 32, lambda m: inference_rate(m, 32, 256, 10)),
    ("inference, 224x224, batch 32", 224, lambda m: inference_rate(m, 224, 32, 6)),
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
  print("| case | ours img/s | keras.applications img/s | ours / keras |")
  print("|---|---|---|---|")
  for label, size, measure in CASES:
    rates = {"ours": [], "keras": []}
    for _ in range(args.repeats):
      for which in ("ours", "keras"):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        rates[which].append(measure(build(which, size)))
    ours, ref = statistics.median(rates["ours"]), statistics.median(rates["keras"])
    print(f"| {label} | {ours:,.0f} | {ref:,.0f} | {ours / ref:.2f} |", flush=True)


if __name__ == "__main__":
  main()
