"""Each role sees images at its own resolution: predict and eval run a checkpoint at the size its
own train run used (or its variant's), never at the size a student's recipe sets."""

import json
import pathlib

import numpy as np
import pytest
from absl import flags

import efficientnet
import main
from data import preprocess
from noisy_student import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
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


def test_a_checkpoint_without_its_run_is_seen_at_the_size_it_was_built_for(tmp_path):
  bare = efficientnet.build_model("efficientnet-b3", 3, width_coefficient=0.1,
                                  depth_coefficient=0.1)
  seen = checkpoints.eval_preprocessing(str(tmp_path / "bare.keras"), bare)
  assert seen.image_size == efficientnet.get_variant("efficientnet-b3").resolution == 300
  assert not seen.small_image
  sized = efficientnet.build_model("efficientnet-b0", 3, image_size=20, small_image=True,
                                   width_coefficient=0.1, depth_coefficient=0.1)
  seen = checkpoints.eval_preprocessing(str(tmp_path / "sized.keras"), sized)
  assert seen.image_size == 20 and seen.small_image
  # A reference checkpoint is built with the variant's own resolution (main._model_args).
  l2 = efficientnet.build_model("efficientnet-l2", 3, width_coefficient=0.1,
                                depth_coefficient=0.1)
  assert checkpoints.eval_preprocessing(
      "unused", l2, checkpoint_format="reference").image_size == 800
  small = efficientnet.build_model("efficientnet-b0", 3, small_image=True,
                                   width_coefficient=0.1, depth_coefficient=0.1)
  assert small.image_size == 32
  assert checkpoints.eval_preprocessing("unused", small, image_size=24).image_size == 24


def test_a_checkpoint_without_its_run_needs_its_normalisation_named(tmp_path):
  """A .keras file alone does not say which mean/std its images had: no silent ImageNet guess.
  A reference checkpoint was trained on ImageNet, so its default is ImageNet's."""
  bare = efficientnet.build_model("efficientnet-b0", 3, small_image=True,
                                  width_coefficient=0.1, depth_coefficient=0.1)
  with pytest.raises(ValueError, match=r"bare\.keras.*no train_config\.json.*--normalization"):
    checkpoints.eval_preprocessing(str(tmp_path / "bare.keras"), bare, normalization="manifest")
  named = checkpoints.eval_preprocessing(str(tmp_path / "bare.keras"), bare, normalization="svhn")
  assert (named.mean, named.std) == tuple(map(tuple, preprocess.NORMALIZATIONS["svhn"]))
  reference = checkpoints.eval_preprocessing("ckpt", bare, checkpoint_format="reference",
                                             normalization="manifest")
  imagenet = preprocess.NORMALIZATIONS["imagenet"]
  assert (reference.mean, reference.std) == tuple(map(tuple, imagenet))
