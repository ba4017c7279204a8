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

ROOT = pathlib.Path(__file__).resolve().parents[2]
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

  def run(self, args, cwd, check=True, tf_log_level="2"):
    """Runs `args` in `cwd` with nothing of this repository on PYTHONPATH (and
    TF_CPP_MIN_LOG_LEVEL=`tf_log_level`; None: unset, as in a user's shell)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    if tf_log_level is not None:
      env["TF_CPP_MIN_LOG_LEVEL"] = tf_log_level
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
  # The class lists robustness evaluation reads (ImageNet-1k's and ImageNet-A's WordNet ids).
  expected |= {f"data/{p.name}" for p in (ROOT / "data").glob("*_wnids.txt")}
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
      "noisy-student --mode=convert: error: unexpected arguments: ['extra']")


def test_the_installed_command_prints_only_the_projects_lines(installed, tmp_path, foreign_lines):
  """Without TF_CPP_MIN_LOG_LEVEL, as from a user's shell: no TensorFlow start-up line, and the
  error names the command that was run."""
  np.savez(tmp_path / "tiny.npz", images=np.zeros((6, 8, 8, 3), np.uint8), labels=np.arange(6))
  done = installed.run([installed.command, "--mode=convert", "--source=npz", "--input=tiny.npz",
                        "--output=out", "--split=train", "--num_shards=1"], tmp_path,
                       tf_log_level=None)
  assert foreign_lines(done.stderr) == [] and "convert train: 6/6 images" in done.stderr
  failed = installed.run([installed.command, "--mode=convert", "--input=nowhere",
                          "--output=out", "--split=train"], tmp_path, check=False,
                         tf_log_level=None)
  assert failed.returncode == 1 and foreign_lines(failed.stderr) == []
  assert failed.stderr.startswith("noisy-student --mode=convert: error: ")


def _readme_loading_snippet():
  """README's Python block that loads serving.keras."""
  readme = (ROOT / "README.md").read_text()
  start = readme.index("`serving.keras` is the `serving_default` model")
  return readme[start:].split("```python\n", 1)[1].split("```", 1)[0]


def test_serving_keras_loads_after_install_as_readme_says(installed, tmp_path):
  """README's snippet, run by the installed project's Python from another directory, loads the
  export of the installed command and answers as the SavedModel beside it does."""
  import efficientnet  # pylint: disable=g-import-not-at-top
  efficientnet.build_model("efficientnet-b0", 3, small_image=True, image_size=16,
                           width_coefficient=0.1, depth_coefficient=0.1).save(
                               tmp_path / "model.keras")
  installed.run([installed.command, "--mode=export", "--checkpoint=model.keras",
                 "--normalization=imagenet", "--class_names=a,b,c", "--output=runs/student_export"],
                tmp_path)
  script = (
      "import json\nimport numpy as np\nimport tensorflow as tf\n"
      "uint8_images = np.random.default_rng(0).integers(0, 256, (2, 20, 24, 3), np.uint8)\n"
      + _readme_loading_snippet() +
      "served = tf.saved_model.load('runs/student_export/saved_model')\n"
      "reference = served.signatures['serving_default'](images=tf.constant(uint8_images))\n"
      "print(json.dumps({'gap': float(np.abs(np.asarray(out['probabilities'])"
      " - reference['probabilities'].numpy()).max()),"
      " 'names': [str(n, 'utf-8') for n in np.asarray(out['class_name'])],"
      " 'reference': [str(n, 'utf-8') for n in reference['class_name'].numpy()]}))\n")
  result = json.loads(installed.run([installed.python, "-c", script], tmp_path).stdout
                      .splitlines()[-1])
  assert result["gap"] < 1e-5 and result["names"] == result["reference"]
  assert set(result["names"]) <= {"a", "b", "c"}


def test_pip_install_leaves_no_untracked_build_directory():
  """setuptools builds `pip install .` in the clone's build/ (and `sdist` writes dist/): git
  ignores both."""
  if not (ROOT / ".git").exists():
    pytest.skip("not a git clone")
  for path in ("build/lib/noisy_student_tf/main.py", "dist/noisy_student_tf-0.1.0.tar.gz"):
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT,
                          check=False).returncode == 0, path


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
  # A bare .keras file (no train run beside it) must name its normalisation.
  installed.run([installed.command, "--mode=beam", "--checkpoint=teacher.keras",
                 "--normalization=imagenet",
                 "--unlabeled_data=unlabeled", "--output=beam", "--images_per_class=2",
                 "--confidence_threshold=0", "--num_shards=1",
                 f"--beam_options={','.join(options)}"], tmp_path)
  stats = json.loads((tmp_path / "beam" / "filter" / "stats.json").read_text())
  assert stats["num_records_read"] == 12
  assert len(list((tmp_path / "beam" / "predict").glob("unlabeled-*.tfrecord"))) == 2


# Oracle: main.py's own --help (two entry points agree: noisy-student = python main.py).
@pytest.mark.slow  # about 19 s; tests/test_main.py checks the help text itself by default
def test_help_is_the_same_through_both_entry_points_and_exits_0(installed, tmp_path):
  """`noisy-student --help` printed only absl's usage line (exit 1): now both entry points print
  the modes and flags by section, or one mode's flags with --mode, and exit 0."""
  for args in (["--help"], ["--help", "--mode=filter"]):
    ours = installed.run([installed.command, *args], tmp_path)
    clone = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                           text=True, timeout=300, check=True)
    # The same text but the command's name (the package's own name, noisy-student-tf, stays).
    named = ours.stdout.replace("usage: noisy-student ", "usage: main.py ").replace(
        "noisy-student --help", "main.py --help")
    assert named == clone.stdout
    for absl_flag in ("--helpfull", "--only_check_args", "--test_tmpdir", "--v "):
      assert absl_flag not in ours.stdout  # absl's and its test runner's own flags
