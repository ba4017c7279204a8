"""How sure a teacher's pseudo labels are: of the predictions in each PREDICT_DIR (predict's
output), those at or above --threshold, their count, mean confidence and share >= 0.9.

  python benchmarks/pseudo_label_confidence.py workdir/benchmark/seed9/iterate/iter_1/predict
"""

import argparse
import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data import records  # noqa: E402


def confidences(predict_dir):
  files = sorted(glob.glob(os.path.join(predict_dir, "unlabeled-*.tfrecord")))
  if not files:
    raise SystemExit(f"{predict_dir}: no unlabeled-*.tfrecord prediction shards")
  feature = {records.CONFIDENCE: tf.io.FixedLenFeature([], tf.float32)}
  return np.concatenate([tf.io.parse_example(batch, feature)[records.CONFIDENCE].numpy()
                         for batch in tf.data.TFRecordDataset(files).batch(4096)])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("predict_dirs", nargs="+")
  parser.add_argument("--threshold", type=float, default=0.3)
  args = parser.parse_args()
  for predict_dir in args.predict_dirs:
    c = confidences(predict_dir)
    kept = c[c >= args.threshold]
    print(json.dumps({"predictions": predict_dir, "records": len(c), "kept": len(kept),
                      "mean_confidence": round(float(kept.mean()), 4),
                      "share_at_least_0.9": round(float(np.mean(kept >= 0.9)), 4)}))


if __name__ == "__main__":
  main()
