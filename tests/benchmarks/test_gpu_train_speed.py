"""benchmarks/gpu_train_speed.py: its flags, its result table, and the one fact it relies on that
CI can check without a GPU (the efficientnet package imports no TensorFlow at import time)."""

import ast
import pathlib
import subprocess
import sys

import pytest
from tests.benchmarks import script

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _script():
  return script.load("gpu_train_speed")


def _result(rate, **extra):
  return dict(images_per_second=rate, window_images_per_second=[rate * 0.99, rate, rate * 1.01],
              step_ms=256_000 / rate, warmup_seconds=60.0, model="m", device="GPU",
              trainable_parameters=5_288_548, **extra)


def test_defaults_are_the_issues_settings():
  args = _script().parse_args([])
  assert (args.batch_size, args.image_size, args.dtype, args.optimizer) == (
      256, 224, "bfloat16", "rmsprop")
  assert args.frameworks == ["keras_jax", "timm"] and args.device == "gpu"
  assert args.timm_model == "tf_efficientnet_b0"


@pytest.mark.parametrize("argv", [["--warmup_steps", "2"], ["--steps", "0"],
                                  ["--dtype", "float64"]])
def test_bad_flags_are_refused(argv):
  with pytest.raises(SystemExit):
    _script().parse_args(argv)


def test_table_gives_each_framework_and_the_ratio():
  script = _script()
  results = {"keras_jax": _result(3000.0), "timm": _result(2400.0)}
  assert script.ratio(results) == pytest.approx(1.25)
  text = script.table(results)
  assert "| keras_jax | m | GPU | 3,000 | 2,970, 3,000, 3,030 | 85.3 | 60.0 | 5,288,548 |" in text
  assert text.splitlines()[-1] == "keras_jax / timm: 1.25 (goal >= 1.0: met)"
  slower = script.table({"keras_jax": _result(1200.0), "timm": _result(2400.0)})
  assert slower.splitlines()[-1] == "keras_jax / timm: 0.50 (goal >= 1.0: not met)"


def test_a_failed_framework_is_a_row_and_no_ratio():
  script = _script()
  results = {"keras_jax": {"error": "timed out after 420 s"}, "timm": _result(2400.0)}
  assert script.ratio(results) is None
  text = script.table(results)
  assert "| keras_jax | failed: timed out after 420 s |" in text
  assert text.splitlines()[-1] == "keras_jax / timm: n/a"


def _import_time_imports(path):
  """Modules a file imports when it is imported (function bodies run later, if ever)."""
  def walk(node):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        continue
      if isinstance(child, ast.Import):
        yield from (alias.name for alias in child.names)
      elif isinstance(child, ast.ImportFrom) and child.module:
        yield child.module
      yield from walk(child)
  return set(walk(ast.parse(path.read_text())))


def test_efficientnet_imports_no_tensorflow():
  """The GPU machine has JAX and no TensorFlow; the benchmark imports efficientnet there.
  (tests/efficientnet/test_model.py runs the model on JAX where JAX is installed.)"""
  for path in (ROOT / "efficientnet").rglob("*.py"):
    tops = {name.split(".")[0] for name in _import_time_imports(path)}
    assert "tensorflow" not in tops, f"{path} imports tensorflow at import time"


@pytest.mark.slow
def test_cpu_smoke_run_of_both_frameworks(tmp_path):
  """Both subprocesses end to end at toy sizes; needs jax, torch and timm (not requirements)."""
  for module in ("jax", "torch", "timm"):
    pytest.importorskip(module)
  output = tmp_path / "result.json"
  subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train_speed.py"), "--device",
                  "cpu", "--image_size", "32", "--batch_size", "2", "--warmup_steps", "3",
                  "--steps", "1", "--repeats", "1", "--json", str(output)],
                 check=True, timeout=900)
  import json  # pylint: disable=import-outside-toplevel
  record = json.loads(output.read_text())
  assert record["keras_jax_over_timm"] > 0
  assert not record["results"]["keras_jax"]["tensorflow_imported"]
