"""Each role sees images at its own resolution: predict and eval run a checkpoint at the size its
own train run used (or its variant's), never at the size a student's recipe sets."""

import json

import numpy as np
from absl import flags

import main

TINY = ["--small_image", "--width_coefficient=0.1", "--depth_coefficient=0.1"]


def run(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


def test_predict_uses_the_teachers_own_size_whatever_the_students_recipe_says(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.arange(12) % 3
  images = rng.integers(0, 255, (12, 20, 20, 3)).astype(np.uint8)
  np.savez(tmp_path / "data.npz", images=images, labels=labels)
  run("--mode=convert", "--source=npz", f"--input={tmp_path / 'data.npz'}",
      f"--output={tmp_path / 'labeled'}", "--split=train", "--num_shards=1")
  teacher = tmp_path / "teacher"
  run("--mode=train", *TINY, "--image_size=12", f"--labeled_data={tmp_path / 'labeled'}",
      f"--eval_data={tmp_path / 'labeled'}", f"--workdir={teacher}", "--train_steps=2",
      "--batch_size=4", "--batch_norm_recalibration_images=8")
  # A student's recipe sets --image_size=24 and other normalisation: the teacher keeps its own.
  for output, extra, size in (("own", [], 12), ("override", ["--inference_image_size=16"], 16)):
    run("--mode=predict", *TINY, "--image_size=24", "--normalization=svhn",
        f"--checkpoint={teacher}", f"--unlabeled_data={tmp_path / 'labeled'}",
        f"--output={tmp_path / output}", *extra)
    seen = json.loads((tmp_path / output / "predict_run.json").read_text())["preprocess"]
    run_config = json.loads((teacher / "train_config.json").read_text())
    assert seen["image_size"] == size
    assert seen["mean"] == run_config["mean"] and seen["std"] == run_config["std"]
