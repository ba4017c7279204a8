"""README's "Your own images, start to finish": its commands, read from README.md, run as written
on tiny folders in the layout it states (convert train, test and unlabeled; teacher; predict;
filter; student; eval; export), in a directory of their own, as main.py in this process (as
tests/test_main.py does).

Added to the train commands only, to make them tiny (the data, paths, counts and every other
flag stay the README's): --width_coefficient=0.1 --depth_coefficient=0.1 --small_image
--image_size=16 (a B0 that traces and runs in seconds on 2 CPU cores), --epochs=EPOCHS instead
of 100, --batch_size=8 for 24 labeled images, and --warmup_epochs=0 (the default 5 warm-up
epochs would keep such a short run's learning rate near 0, so the teacher would not learn the
classes the filter balances).
"""

import json
import os
import pathlib
import shlex

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECTION = "## Your own images, start to finish"
# The bright channel of each class's images (what a tiny network learns in a few steps).
CLASSES = {"blue": 2, "green": 1, "red": 0}
SIZES = {"train": 8, "test": 5, "unlabeled": 60}  # images per class
TINY_TRAINING = {"width_coefficient": "0.1", "depth_coefficient": "0.1", "small_image": None,
                 "image_size": "16", "epochs": "6", "batch_size": "8", "warmup_epochs": "0"}


def readme_commands():
  """The section's ```bash block: each command as its arguments after `python main.py`."""
  text = (ROOT / "README.md").read_text()
  block = text[text.index(SECTION):].split("```bash\n", 1)[1].split("```", 1)[0]
  commands = []
  for command in block.replace("\\\n", " ").splitlines():
    args = shlex.split(command, comments=True)
    if args:
      assert args[:2] == ["python", "main.py"], command
      commands.append(args[2:])
  return commands


def _with(args, **values):
  """`args` with each named flag set to a new value (None: a bare boolean), others kept."""
  kept = [a for a in args if a.lstrip("-").split("=", 1)[0] not in values]
  return kept + [f"--{k}" if v is None else f"--{k}={v}" for k, v in values.items()]


def _write_folders(root):
  """my_images/ as README lays it out: train/<class>/, test/<class>/, unlabeled/ (no classes)."""
  rng = np.random.default_rng(0)
  for split, per_class in SIZES.items():
    for name, channel in CLASSES.items():
      for i in range(per_class):
        pixels = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
        pixels[:, :, channel] += 180
        folder = root / "my_images" / split / ("" if split == "unlabeled" else name)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  root = tmp_path_factory.mktemp("own_data")
  _write_folders(root)
  commands = readme_commands()
  cwd = os.getcwd()
  os.chdir(root)  # the README's paths are relative to where it is run
  try:
    for args in commands:
      if "--mode=train" in args:
        args = _with(args, **TINY_TRAINING)
      flags.FLAGS.unparse_flags()
      flags.FLAGS(["main.py", *args])
      main.main(["main.py"])
  finally:
    os.chdir(cwd)
  return root, commands


def test_the_section_states_the_layout_and_converts_every_folder_with_the_folder_source():
  text = (ROOT / "README.md").read_text()
  section = text[text.index(SECTION):text.index("\n## ", text.index(SECTION) + 1)]
  for folder in ("train/<class>/", "test/<class>/", "unlabeled/"):
    assert folder in section
  converts = [args for args in readme_commands() if "--mode=convert" in args]
  assert sorted(a for args in converts for a in args if a.startswith("--input=")) == [
      "--input=my_images/test", "--input=my_images/train", "--input=my_images/unlabeled"]
  assert all("--source=folder" in args for args in converts)
  modes = [a for args in readme_commands() for a in args if a.startswith("--mode=")]
  assert modes == ["--mode=convert"] * 3 + ["--mode=train", "--mode=predict", "--mode=filter",
                                            "--mode=train", "--mode=eval", "--mode=export"]


def test_readme_commands_run_as_written_on_tiny_folders(ran):
  root, commands = ran
  names = sorted(CLASSES)
  for split, per_class in SIZES.items():
    manifest = _json(root / "data" / "mine" / split / "manifest.json")
    assert manifest["splits"][split]["num_examples"] == per_class * len(CLASSES)
    assert manifest["class_names"] == ([] if split == "unlabeled" else names)
  teacher = _json(root / "runs" / "teacher" / "metrics.json")
  assert teacher["num_examples"] == SIZES["test"] * len(CLASSES)

  (target,) = [int(a.split("=")[1]) for args in commands for a in args
               if a.startswith("--images_per_class=")]
  stats = _json(root / "runs" / "pseudo" / "stats.json")
  kept = np.array(stats["per_class"]["kept_unique"])
  assert stats["images_per_class"] == target and stats["num_records_read"] == 180
  # Every class the teacher gives images is filled to the README's count, with at most 10 copies.
  assert stats["per_class"]["with_copies"] == [target if k else 0 for k in kept.tolist()]
  assert np.all(target <= 10 * kept[kept > 0])

  metrics = _json(root / "runs" / "eval" / "metrics.json")
  assert metrics["num_examples"] == 15 and set(metrics["per_class_accuracy"]) <= set(names)
  assert np.sum(metrics["confusion_matrix"]) == 15
  export = root / "runs" / "student_export"
  assert (export / "serving.keras").is_file()
  served = tf.saved_model.load(str(export / "saved_model"))
  out = served.signatures["serving_default"](images=tf.zeros([2, 16, 16, 3], tf.uint8))
  assert out["probabilities"].shape == (2, len(CLASSES))
  assert set(out["class_name"].numpy().astype(str)) <= set(names)
