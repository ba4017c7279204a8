#!/usr/bin/env bash
# Sets up a fresh machine and runs the default test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
    && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q -r requirements.txt -r requirements-test.txt
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Test files run in parallel worker processes, each file whole in one worker (its module
# fixtures built once): on 2 cores about 1.6x faster than one process (benchmarks/RESULTS.md).
# More than 4 workers would only multiply TensorFlow's threads; PYTEST_WORKERS=0 runs in-process.
workers="${PYTEST_WORKERS:-$(nproc)}"
[ "$workers" -gt 4 ] && workers=4
exec python3 -m pytest -n "$workers" --dist loadfile "$@"
