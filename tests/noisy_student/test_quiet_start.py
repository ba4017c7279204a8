"""What a user's terminal shows on a CPU machine: TensorFlow's start-up lines are filtered at the
file descriptor (no log-level variable silences them: measured here), every other line passes,
and each mode's stderr holds only the project's own lines (`foreign_lines`, conftest.py), with
TF_CPP_MIN_LOG_LEVEL unset (scripts/test.sh sets it; a user's shell does not)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
# What TensorFlow 2.21 printed on this project's 2-core CPU machine, verbatim but for times and
# thread ids, before the filter: the C++ start-up lines (twice: two libraries initialise them),
# the missing driver's, and a SavedModel's chatter.
START_UP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796684210.252539   22119 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796684210.252901   22119 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "I0000 00:00:1796683704.645884    6886 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796684218.158189   22119 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
]
# Lines that matter on a GPU machine, or anywhere: they stay.
KEPT = [
    "I0000 00:00:1796684210.1   2211 gpu_device.cc:2020] Created device "
    "/job:localhost/replica:0/task:0/device:GPU:0 with 78000 MB memory:  -> device: 0, name: "
    "NVIDIA H100 80GB HBM3, pci bus id: 0000:00:05.0, compute capability: 9.0",
    "E0000 00:00:1796684218.1   2211 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
    "error: Failed call to cuInit: CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE (804)",
    "Traceback (most recent call last):",
    "a line of the user's own",
]


def _python(code, env=None, cwd=ROOT):
  environment = {k: v for k, v in os.environ.items()
                 if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
  environment.update(env or {})
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment,
                        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def test_filtered_stderr_drops_the_noise_and_passes_every_other_line_in_order():
  """At the descriptor, from C (os.write) and Python alike; no TensorFlow needed to check it."""
  lines = [START_UP[0], KEPT[0], *START_UP[1:], *KEPT[1:]]
  code = (
      "import os, sys, types\n"
      "sys.modules['tensorflow'] = types.SimpleNamespace(config=types.SimpleNamespace("
      "list_physical_devices=lambda: []))\n"   # the module imports TensorFlow when imported
      "sys.modules['keras'] = types.ModuleType('keras')\n"
      "from noisy_student import quiet_start\n"
      f"lines = {lines!r}\n"
      "with quiet_start.filtered_stderr():\n"
      "  for i, line in enumerate(lines):\n"
      "    if i % 2: os.write(2, (line + '\\n').encode())\n"
      "    else: print(line, file=sys.stderr)\n"
      "print('after the block', file=sys.stderr)\n")
  result = _python(code)
  assert result.returncode == 0, result.stderr
  assert result.stderr.splitlines() == KEPT + ["after the block"]


def test_log_level_variables_leave_the_start_up_lines_and_the_filter_removes_them():
  """The measurement: TF_CPP_MIN_LOG_LEVEL=3, ABSL_MIN_LOG_LEVEL=3 and GLOG_minloglevel=3 still
  print the start-up lines (C++ writes them before absl's log is initialised); importing
  TensorFlow through quiet_start, with none of them set, prints nothing."""
  code = "import tensorflow as tf; tf.config.list_physical_devices()"
  quiet = {"TF_CPP_MIN_LOG_LEVEL": "3", "ABSL_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3"}
  unfiltered = _python(code, env=quiet)
  assert unfiltered.returncode == 0, unfiltered.stderr
  assert START_UP[0] in unfiltered.stderr.splitlines()
  assert "oneDNN custom operations are on" in unfiltered.stderr
  filtered = _python("from noisy_student import quiet_start\n" + code)
  assert filtered.returncode == 0 and filtered.stderr == ""


def test_python_log_records_of_noise_are_dropped_and_others_kept(caplog):
  from noisy_student import quiet_start  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  quiet_start.install_filters()
  logger = logging.getLogger("absl")  # TensorFlow's SavedModel code logs through absl's logger
  caplog.set_level(logging.INFO, logger="absl")
  logger.info("Writing fingerprint to runs/export/.tmp-1-saved_model/fingerprint.pb")
  logger.info("Function `<lambda>` contains input name(s) resource with unsupported "
              "characters which will be renamed to x")
  logger.info("predict: 60 images in 4 shards, 18.3 images/s")
  assert [r.getMessage() for r in caplog.records] == [
      "predict: 60 images in 4 shards, 18.3 images/s"]


def _write_folders(root):
  rng = np.random.default_rng(0)
  for split, per_class in (("train", 8), ("test", 4), ("unlabeled", 10)):
    for channel, name in enumerate(("red", "green", "blue")):
      folder = root / split / ("" if split == "unlabeled" else name)
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        pixels = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
        pixels[:, :, channel] += 180
        Image.fromarray(pixels).save(folder / f"{name}_{i}.png")


def _main(*args, cwd):
  """`python main.py ARGS` as a user runs it: another directory, no TF_CPP_MIN_LOG_LEVEL."""
  environment = {k: v for k, v in os.environ.items()
                 if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd,
                        env=environment, capture_output=True, text=True, timeout=TIMEOUT_S,
                        check=False)


def test_convert_and_an_error_print_only_the_projects_lines(tmp_path, foreign_lines):
  _write_folders(tmp_path)
  done = _main("--mode=convert", "--source=folder", "--input=train", "--output=data/train",
               "--split=train", cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  assert foreign_lines(done.stderr) == [] and "convert train: 24/24 images" in done.stderr
  assert json.loads(done.stdout)["splits"] == {"train": 24}
  failed = _main("--mode=convert", "--input=train", "--output=data/x", "--split=train",
                 cwd=tmp_path)
  assert failed.returncode == 1 and foreign_lines(failed.stderr) == []
  assert failed.stderr.splitlines() == [
      "main.py --mode=convert: error: --source=idx (the default) reads MNIST-layout IDX files "
      "and train has no train-images-idx3-ubyte[.gz]; for a folder of images (one sub-folder "
      "per class, or any tree with --unlabeled) use --source=folder"]


TINY = ["--width_coefficient=0.1", "--depth_coefficient=0.1", "--image_size=16",
        "--small_image", "--batch_size=8", "--warmup_epochs=0"]


@pytest.mark.slow  # every mode in its own process: about 3 minutes on 2 CPU cores
def test_every_mode_prints_only_the_projects_lines(tmp_path, foreign_lines):
  _write_folders(tmp_path / "images")
  commands = [
      ["--mode=convert", "--source=folder", "--input=images/train", "--output=data/train",
       "--split=train"],
      ["--mode=convert", "--source=folder", "--input=images/test", "--output=data/test",
       "--split=test"],
      ["--mode=convert", "--source=folder", "--input=images/unlabeled", "--output=data/unlabeled",
       "--split=unlabeled", "--unlabeled"],
      ["--mode=train", "--labeled_data=data/train", "--eval_data=data/test", "--train_steps=3",
       "--workdir=runs/teacher", *TINY],
      ["--mode=finetune", "--init_checkpoint=runs/teacher", "--labeled_data=data/train",
       "--train_steps=2", "--workdir=runs/finetune", *TINY],
      ["--mode=predict", "--checkpoint=runs/teacher", "--unlabeled_data=data/unlabeled",
       "--output=runs/predict"],
      ["--mode=filter", "--predictions=runs/predict", "--unlabeled_data=data/unlabeled",
       "--output=runs/pseudo", "--images_per_class=10", "--confidence_threshold=0"],
      ["--mode=eval", "--checkpoint=runs/teacher", "--eval_data=data/test", "--output=runs/eval"],
      ["--mode=export", "--checkpoint=runs/teacher", "--output=runs/export"],
      ["--mode=iterate", "--labeled_data=data/train", "--unlabeled_data=data/unlabeled",
       "--eval_data=data/test", "--train_steps=3", "--workdir=runs/iterate",
       "--images_per_class=10", "--confidence_threshold=0", *TINY],
  ]
  try:
    import apache_beam  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    commands.append(["--mode=beam", "--checkpoint=runs/teacher",
                     "--unlabeled_data=data/unlabeled", "--output=runs/beam",
                     "--images_per_class=10", "--confidence_threshold=0"])
  except ImportError:
    pass
  stderr = {}
  for args in commands:
    result = _main(*args, cwd=tmp_path)
    stderr[args[0]] = result.stderr
    # iterate may refuse a teacher at chance after 3 steps: one line of ours, which is the point.
    assert result.returncode == 0 or args[0] == "--mode=iterate", (args, result.stderr[-3000:])
    assert foreign_lines(result.stderr) == [], (args, result.stderr[-3000:])
  assert "eval data/test: top-1 " in stderr["--mode=eval"]
