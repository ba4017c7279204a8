#!/usr/bin/env bash
# Downloads, into .whl/ at the repository root (git-ignored), the wheels that
# benchmarks/gpu_train_speed.py needs on the GPU machine beyond what it has: that machine's
# Python 3.12 image ships jax, torch, timm, numpy and keras' other dependencies (absl-py, h5py,
# ml-dtypes, rich, packaging, typing-extensions) but not keras, namex or optree, and it cannot
# reach a package index. Run here once; the device command in gpu_train_speed.py's docstring
# installs them there with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`.
# --no-deps: pip resolves nothing here; the list above is keras 3.15.1's Requires-Dist checked
# against that image's package list. About 3 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
ls -l .whl
