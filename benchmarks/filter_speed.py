"""Speed and peak memory of the filter-and-balance core on synthetic predictions.

Each (records, images_per_class) case runs in a fresh subprocess, so ru_maxrss is that case's
own peak. The synthetic predictions mimic a 1000-class teacher: labels follow a seeded skewed
class distribution (some classes over-full, some short), confidences (the top-1 probability of
soft top-k labels, stored as float32 like the predict phase does) follow Beta(1.5, 1). They are
generated in chunks, so generation adds only a chunk to the peak, and are fed in record order
with a 0.3 threshold and duplication on. Only the core's time (add + result) is counted, as wall
time and as this process's CPU time (the core is single-threaded NumPy, so on a shared machine
the CPU-time rate is the one that compares).

Peak RSS depends on glibc: its mmap threshold adapts upwards after large frees, so freed arrays
may stay resident. Each case pins the threshold as `main.py --mode=filter` does
(`filter_balance.return_freed_memory_promptly`); --glibc_default leaves it adaptive.

Usage:
  python benchmarks/filter_speed.py                       # 1M and 10M, N=130000 and N=1000
  python benchmarks/filter_speed.py --records 1000000 --images_per_class 1000
  python benchmarks/filter_speed.py --glibc_default
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from noisy_student import filter_balance  # pylint: disable=wrong-import-position

NUM_CLASSES = 1000
CHUNK = 1 << 16


def _peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def _chunks(num_records, seed=0):
  rng = np.random.default_rng(seed)
  class_probabilities = rng.dirichlet(np.full(NUM_CLASSES, 2.0))
  for start in range(0, num_records, CHUNK):
    size = min(CHUNK, num_records - start)
    labels = rng.choice(NUM_CLASSES, size, p=class_probabilities)
    confidences = rng.beta(1.5, 1.0, size).astype(np.float32)
    yield labels, confidences, np.arange(start, start + size)


def run_case(num_records, images_per_class, glibc_default=False):
  """Feeds the core in this process; returns the measurements as a dict."""
  if not glibc_default:
    filter_balance.return_freed_memory_promptly()  # as main.py --mode=filter does
  baseline = _peak_rss_mib()
  rule = filter_balance.FilterRule(threshold=0.3, images_per_class=images_per_class,
                                   duplicate=True, seed=0)
  selector = filter_balance.Selector(NUM_CLASSES, rule)
  core_s = core_cpu_s = 0.0
  for chunk in _chunks(num_records):
    start, start_cpu = time.perf_counter(), time.process_time()
    selector.add(*chunk)
    core_s += time.perf_counter() - start
    core_cpu_s += time.process_time() - start_cpu
  start, start_cpu = time.perf_counter(), time.process_time()
  selection = selector.result()
  core_s += time.perf_counter() - start
  core_cpu_s += time.process_time() - start_cpu
  return {"records": num_records, "images_per_class": images_per_class, "core_s": core_s,
          "core_cpu_s": core_cpu_s, "kept_unique": len(selection.record_ids),
          "with_copies": selection.num_records, "peak_candidates": selector.peak_candidates,
          "baseline_rss_mib": baseline, "peak_rss_mib": _peak_rss_mib()}


def _run_in_subprocess(num_records, images_per_class, glibc_default):
  command = [sys.executable, os.path.abspath(__file__), "--worker", "--records", str(num_records),
             "--images_per_class", str(images_per_class)] + (
                 ["--glibc_default"] if glibc_default else [])
  return json.loads(subprocess.run(command, check=True, capture_output=True,
                                   text=True).stdout)


def _table(rows):
  lines = ["| records | images_per_class | core wall s | core CPU s | records/s (CPU) | "
           "kept unique | with copies | peak candidates | RSS before (MiB) | peak RSS (MiB) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['records']:,} | {r['images_per_class']:,} | {r['core_s']:.2f} | "
                 f"{r['core_cpu_s']:.2f} | {r['records'] / r['core_cpu_s'] / 1e6:.2f}M | "
                 f"{r['kept_unique']:,} | "
                 f"{r['with_copies']:,} | {r['peak_candidates']:,} | "
                 f"{r['baseline_rss_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", type=int, nargs="+", default=[1_000_000, 10_000_000])
  parser.add_argument("--images_per_class", type=int, nargs="+", default=[130_000, 1000])
  parser.add_argument("--worker", action="store_true", help="run one case in this process")
  parser.add_argument("--glibc_default", action="store_true",
                      help="leave glibc's mmap threshold adaptive (main.py pins it)")
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(run_case(args.records[0], args.images_per_class[0], args.glibc_default)))
    return
  rows = [_run_in_subprocess(n, per_class, args.glibc_default)
          for per_class in args.images_per_class
          for n in args.records]
  print(_table(rows))
  for per_class in args.images_per_class:
    peaks = {r["records"]: r["peak_rss_mib"] for r in rows if r["images_per_class"] == per_class}
    if len(peaks) > 1:
      print(f"images_per_class={per_class}: peak RSS at {max(peaks):,} records / at "
            f"{min(peaks):,} = {peaks[max(peaks)] / peaks[min(peaks)]:.2f}")


if __name__ == "__main__":
  main()
