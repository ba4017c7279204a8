#!/usr/bin/env bash
# The demo on a fresh machine: installs what it needs, converts Fashion-MNIST (1,000 labeled
# images, 5,000 validation, 54,000 unlabeled, 10,000 test), trains a teacher, predicts, filters,
# trains a noised student, evaluates both: round 1 of the Fashion-MNIST benchmark's seed 3
# (recipes/fashion_mnist_demo.flags). Then it measures what moves far beyond the seed spread:
# teacher and student under corruptions (mCE, teacher = 100) and perturbations (flip rate) on
# the first 1,000 test images, and the pseudo labels' accuracy against the hidden labels, and
# prints them beside top-1 with their ranges over the benchmark's seeds. About 14 minutes on 2
# CPU cores. Extra arguments go to main.py's iterate (e.g. `bash scripts/demo.sh --seed=1`).
set -euo pipefail
cd "$(dirname "$0")/.."
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -e "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST is missing: install Debian's package (sudo apt-get install" \
         "dataset-fashion-mnist), or convert your own data (see README, 'convert')." >&2
    exit 1
  fi
fi
python3 -m pip install -q -r requirements.txt
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
DATA=workdir/fashion_mnist
if [ ! -e "$DATA/validation/manifest.json" ]; then
  python3 main.py --mode=convert --source=idx --input="$FMNIST" --split=train \
    --output="$DATA" --labeled_per_class=100 --validation_per_class=500 --seed=3 --num_shards=8 \
    --flagfile=recipes/fashion_mnist_classes.flags
fi
if [ ! -e "$DATA/test/manifest.json" ]; then
  python3 main.py --mode=convert --source=idx --input="$FMNIST" --split=t10k \
    --output="$DATA/test" --num_shards=2 --flagfile=recipes/fashion_mnist_classes.flags
fi
python3 main.py --flagfile=recipes/fashion_mnist_demo.flags --mode=iterate "$@"
SUBSET="$DATA/test_1000"
if [ ! -e "$SUBSET/manifest.json" ]; then
  python3 main.py --mode=convert --source=idx --input="$FMNIST" --split=t10k --output="$SUBSET" \
    --num_shards=1 --limit=1000 --flagfile=recipes/fashion_mnist_classes.flags
fi
for role in teacher student; do
  model=workdir/demo/iter_0/train
  baseline=()
  if [ "$role" = student ]; then
    model=workdir/demo/iter_1/train
    baseline=(--robustness_baseline=workdir/demo/robustness_teacher/robustness.json)
  fi
  if [ ! -e "workdir/demo/robustness_$role/robustness.json" ]; then
    python3 main.py --flagfile=recipes/fashion_mnist_demo.flags --mode=eval \
      --checkpoint="$model" --eval_data="$SUBSET" --validation_data= \
      --output="workdir/demo/robustness_$role" --robustness=corruptions,perturbations \
      ${baseline[@]+"${baseline[@]}"}
  fi
done
python3 benchmarks/fashion_mnist.py --demo_report workdir/demo --demo_data "$DATA"
echo "Report: workdir/demo/summary.json, workdir/demo/accuracy_per_round.png," \
     "workdir/demo/iter_1/filter/*.png, workdir/demo/robustness_*/;" \
     "TensorBoard: tensorboard --logdir workdir/demo"
