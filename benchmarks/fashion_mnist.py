"""The Fashion-MNIST semi-supervised benchmark: does a noised student beat its teacher?

Per seed: a fresh 1,000-label split (100 per class), then `main.py --mode=iterate` with
recipes/fashion_mnist_benchmark.flags (teacher -> student 1 -> student 2), plus two controls on
the same budget: student 1 without noise (no RandAugment, dropout or stochastic depth), and a
fully supervised model on all 60,000 labels (the ceiling). Prints a markdown table (mean and
spread over seeds) and writes workdir/benchmark/results.json.

  python benchmarks/fashion_mnist.py --seeds 0 1 2      # about 2 hours per seed on 2 CPU cores
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
RECIPE = "--flagfile=recipes/fashion_mnist_benchmark.flags"
NO_NOISE = ["--randaugment_layers=0", "--nocutout", "--dropout_rate=0", "--survival_prob=1"]


def main_py(*args):
  start = time.perf_counter()
  subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, check=True)
  return time.perf_counter() - start


def _json(path):
  with open(os.path.join(ROOT, path)) as f:
    return json.load(f)


def run_seed(seed, work):
  data = f"{work}/data_seed{seed}"
  if not os.path.exists(os.path.join(ROOT, data, "labeled", "manifest.json")):
    main_py("--mode=convert", "--source=idx", f"--input={FMNIST}", "--split=train",
            f"--output={data}", "--labeled_per_class=100", f"--seed={seed}", "--num_shards=8")
  if not os.path.exists(os.path.join(ROOT, work, "test", "manifest.json")):
    main_py("--mode=convert", "--source=idx", f"--input={FMNIST}", "--split=t10k",
            f"--output={work}/test", "--num_shards=2")
  paths = [f"--labeled_data={data}/labeled", f"--unlabeled_data={data}/unlabeled",
           f"--eval_data={work}/test", f"--seed={seed}"]
  runs = f"{work}/seed{seed}"
  wall = {"iterate": main_py(RECIPE, "--mode=iterate", f"--workdir={runs}/iterate", *paths)}
  summary = _json(f"{runs}/iterate/summary.json")
  # Control: the round-1 student trained on the same pseudo labels without any noise.
  wall["no_noise"] = main_py(RECIPE, "--mode=train", f"--workdir={runs}/student_no_noise",
                             f"--pseudo_labeled_data={runs}/iterate/iter_1/filter",
                             "--epochs=30", *NO_NOISE, *paths)
  # Ceiling: all 60,000 labels, same model and noise, as many images as a student sees.
  wall["supervised_60k"] = main_py(RECIPE, "--mode=train", f"--workdir={runs}/supervised_60k",
                                   *paths, f"--labeled_data={data}", "--epochs=2",
                                   "--warmup_epochs=0.1")
  filter_stats = _json(f"{runs}/iterate/iter_1/filter/stats.json")
  return {
      "teacher": summary["rounds"][0]["top1"],
      "student_1": summary["rounds"][1]["top1"],
      "student_2": summary["rounds"][2]["top1"] if len(summary["rounds"]) > 2 else None,
      "student_1_no_noise": _json(f"{runs}/student_no_noise/history.json")["eval"]["top1"],
      "supervised_60k": _json(f"{runs}/supervised_60k/history.json")["eval"]["top1"],
      "kept_per_class": filter_stats["per_class"]["kept_unique"],
      "wall_seconds": wall,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", default="workdir/benchmark")
  args = parser.parse_args()
  results = {seed: run_seed(seed, args.workdir) for seed in args.seeds}
  with open(os.path.join(ROOT, args.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  print("| run | test top-1, mean | spread (min-max) |\n|---|---|---|")
  for row in ("teacher", "student_1", "student_2", "student_1_no_noise", "supervised_60k"):
    values = [r[row] for r in results.values() if r[row] is not None]
    if values:
      print(f"| {row} | {statistics.mean(values):.4f} | {min(values):.4f}-{max(values):.4f} |")


if __name__ == "__main__":
  main()
