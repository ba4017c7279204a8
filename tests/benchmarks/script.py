"""benchmarks/*.py are scripts, not a package: their tests load one by path."""

import importlib.util
import pathlib
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def load(name, module_name=None):
  """benchmarks/<name>.py as a fresh module; the folder goes on sys.path for its own imports
  (fashion_mnist_studies imports fashion_mnist)."""
  if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
  spec = importlib.util.spec_from_file_location(module_name or name, BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
