"""noisy_student/checkpoints.py: how a checkpoint is seen (its size and normalisation) when its
run does not say."""

import pytest

import efficientnet
from data import preprocess
from noisy_student import checkpoints


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
