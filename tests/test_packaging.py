"""`pip install .`: one directory in site-packages, the `noisy-student` command run from another
directory with the recipes, and Beam workers that get the code by `--setup_file`.

The project is installed as Dataflow's workers get it: a source distribution built from a copy
of the working tree by `python setup.py sdist` (what Beam's `--setup_file` runs), pip-installed
without dependencies or a build environment into a fresh venv that sees this environment's
TensorFlow.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "noisy_student_tf"
# The repository's packages; installed under PACKAGE, never as top-level names of their own
# (`data` and `main` are generic, and PyPI's `efficientnet` installs a top-level `efficientnet`).
CODE = ("data", "efficientnet", "noisy_student")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


class Installed:
  """A venv with the project installed: `python`, `command` (noisy-student), `site` (its
  site-packages), `source` (the copy it was built from)."""

  def __init__(self, root):
    self.root = root
    self.source = root / "source"
    self.venv = root / "venv"
    self.python = self.venv / "bin" / "python"
    self.command = self.venv / "bin" / "noisy-student"
    self.site = None

  def run(self, args, cwd, check=True):
    """Runs `args` in `cwd` with nothing of this repository on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    if check and result.returncode:
      raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _build(root):
  installed = Installed(root)
  shutil.copytree(ROOT, installed.source, ignore=shutil.ignore_patterns(
      ".git", "workdir", "runs", ".whl", "build", "dist", "*.egg-info", "__pycache__",
      ".pytest_cache", ".benchmarks"))
  subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(root / "dist")],
                 cwd=installed.source, check=True, capture_output=True)
  (sdist,) = (root / "dist").glob("*.tar.gz")
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                  str(installed.venv)], check=True)
  installed.site = pathlib.Path(installed.run(
      [installed.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      root).stdout.strip())
  if sys.prefix != sys.base_prefix:
    # Run from a venv: the new venv's system site-packages are the base interpreter's, so it is
    # pointed at this one's packages (TensorFlow, pip, setuptools) explicitly.
    import site  # pylint: disable=g-import-not-at-top
    (installed.site / "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  installed.run([installed.python, "-m", "pip", "install", "-q", "--no-deps",
                 "--no-build-isolation", "--no-index", sdist], root)
  return installed


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  return _build(tmp_path_factory.mktemp("install"))


def _files(directory):
  return {p.relative_to(directory).as_posix() for p in directory.rglob("*")
          if p.is_file() and "__pycache__" not in p.parts}


def test_site_packages_gets_one_directory_holding_all_the_code(installed):
  entries = {p.name for p in installed.site.iterdir()} - {"outer.pth"}
  assert {e for e in entries if not e.endswith(".dist-info")} == {PACKAGE}
  assert len(entries) == 2  # and its .dist-info
  expected = {"main.py"} | {f"recipes/{p.name}" for p in (ROOT / "recipes").glob("*.flags")}
  for name in CODE:
    expected |= {f"{name}/{f}" for f in _files(ROOT / name) if f.endswith(".py")}
  assert _files(installed.site / PACKAGE) == expected


def test_generic_names_are_importable_only_through_the_package(installed, tmp_path):
  script = (
      "import importlib\n"
      f"for name in {('data', 'main', 'efficientnet', 'noisy_student')!r}:\n"
      "  try:\n"
      "    importlib.import_module(name)\n"
      "    print(name, 'importable')\n"
      "  except ModuleNotFoundError:\n"
      "    pass\n"
      # What Beam's workers import first (--beam_plugins); then the pipeline's modules load.
      "import noisy_student_tf.noisy_student.package_path\n"
      "import data.records, noisy_student.filter_balance\n"
      "print('through the package', data.records.__file__)\n")
  out = installed.run([installed.python, "-c", script], tmp_path).stdout.splitlines()
  assert out == [f"through the package {installed.site / PACKAGE / 'data' / 'records.py'}"]


def test_command_runs_recipes_from_another_directory(installed, tmp_path):
  """`noisy-student` is `python main.py`: the same flags, and --flagfile=recipes/... found in
  the installed package (fashion_mnist_demo.flags includes fashion_mnist_benchmark.flags by that
  path), also from a flag file of the user's that includes a recipe."""
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "tiny.npz", images=rng.integers(0, 255, (10, 8, 8, 3), np.uint8),
           labels=np.arange(10))
  (tmp_path / "mine.flags").write_text("--flagfile=recipes/fashion_mnist_classes.flags\n")
  installed.run([installed.command, "--flagfile=recipes/fashion_mnist_demo.flags",
                 "--flagfile=mine.flags", "--mode=convert", "--source=npz", "--input=tiny.npz",
                 "--output=out", "--split=train", "--num_shards=1"], tmp_path)
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["class_names"] == FASHION_MNIST_CLASSES
  assert manifest["splits"]["train"]["num_examples"] == 10

  bad = installed.run([installed.command, "--model=efficientnet-b9"], tmp_path, check=False)
  assert bad.returncode and "--model=efficientnet-b9" in bad.stderr
  extra = installed.run([installed.command, "--mode=convert", "extra"], tmp_path, check=False)
  assert extra.returncode and extra.stderr.strip().splitlines()[-1] == (
      "main.py --mode=convert: error: unexpected arguments: ['extra']")


@pytest.mark.slow  # 20-30 s: a Beam job with a worker process that imports TensorFlow
def test_beam_workers_that_install_the_package_by_setup_file_run_the_pipeline(installed, tmp_path):
  """A Beam worker in its own process, given only the installed package (as Dataflow's workers
  are after `--setup_file`): the portable runner's subprocess harness, started from the venv in
  a directory without the code. It imports noisy_student_tf's package_path first
  (--beam_plugins, which --setup_file makes beam_pipeline add), else unpickling the pipeline's
  functions fails on `noisy_student`."""
  pytest.importorskip("apache_beam")
  import efficientnet  # pylint: disable=g-import-not-at-top
  model = efficientnet.build_model("efficientnet-b0", 3, small_image=True, image_size=16,
                                   width_coefficient=0.1, depth_coefficient=0.1)
  model.save(tmp_path / "teacher.keras")
  rng = np.random.default_rng(1)
  np.savez(tmp_path / "unlabeled.npz", images=rng.integers(0, 255, (12, 16, 16, 3), np.uint8),
           labels=np.arange(12) % 3)
  installed.run([installed.command, "--mode=convert", "--source=npz", "--input=unlabeled.npz",
                 "--output=unlabeled", "--split=unlabeled", "--unlabeled", "--num_shards=2"],
                tmp_path)
  worker = f"{installed.python} -m apache_beam.runners.worker.sdk_worker_main"
  options = ["--runner=PortableRunner", "--job_endpoint=embed",
             "--environment_type=beam:env:harness_subprocess_python:v1",
             f"--environment_config={worker}", f"--setup_file={installed.source / 'setup.py'}"]
  installed.run([installed.command, "--mode=beam", "--checkpoint=teacher.keras",
                 "--unlabeled_data=unlabeled", "--output=beam", "--images_per_class=2",
                 "--confidence_threshold=0", "--num_shards=1",
                 f"--beam_options={','.join(options)}"], tmp_path)
  stats = json.loads((tmp_path / "beam" / "filter" / "stats.json").read_text())
  assert stats["num_records_read"] == 12
  assert len(list((tmp_path / "beam" / "predict").glob("unlabeled-*.tfrecord"))) == 2
