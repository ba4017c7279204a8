"""data/manifest.py: the per-channel statistics convert records, and reading a manifest's splits."""

import numpy as np
import pytest


def test_a_constant_channel_keeps_its_scale_instead_of_normalising_to_nan():
  """std 0 (a channel that never varies) would make (x - mean) / std NaN for every image."""
  from data import manifest  # pylint: disable=g-import-not-at-top
  from data import preprocess  # pylint: disable=g-import-not-at-top
  stats = manifest.PixelStats()
  rng = np.random.default_rng(0)
  for _ in range(3):
    pixels = rng.integers(0, 256, (4, 4, 3), np.uint8)
    pixels[..., 1:] = 9  # green and blue constant
    stats.add(*manifest.image_statistics(pixels))
  mean, std = stats.mean_std()
  assert std[1:] == [1.0, 1.0] and std[0] > 1 and mean[1:] == [9.0, 9.0]
  config = preprocess.PreprocessConfig(image_size=4, mean=tuple(mean), std=tuple(std))
  assert np.isfinite(preprocess.normalize(pixels, config).numpy()).all()


def test_pixel_stats_over_images_of_every_layout_are_numpys_over_all_their_pixels():
  """Gray images count for all three channels (the readers decode them so); alpha is ignored."""
  from data import manifest  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, (5, 7, 3), np.uint8), rng.integers(0, 256, (4, 4), np.uint8),
            rng.integers(0, 256, (3, 6, 1), np.uint8), rng.integers(0, 256, (2, 9, 4), np.uint8)]
  stats = manifest.PixelStats()
  for image in images:
    stats.add(*manifest.image_statistics(image))
  rgb = [np.repeat(i.reshape(-1, 1), 3, axis=1) if i.ndim == 2 or i.shape[-1] == 1
         else i.reshape(-1, i.shape[-1])[:, :3] for i in images]
  pixels = np.concatenate(rgb).astype(np.float64)
  mean, std = stats.mean_std()
  np.testing.assert_allclose(mean, pixels.mean(axis=0), atol=1e-6)  # rounded to 6 decimals
  np.testing.assert_allclose(std, pixels.std(axis=0), atol=1e-6)
  assert manifest.PixelStats().mean_std() == (None, None)


def test_split_shards_reads_the_named_or_only_split_relative_to_the_directory(tmp_path):
  from data import manifest  # pylint: disable=g-import-not-at-top
  listed = {"splits": {"train": {"shards": ["train-0.tfrecord", "/abs/train-1.tfrecord"]},
                       "test": {"shards": ["test-0.tfrecord"]}}}
  manifest.save_manifest(str(tmp_path), listed)
  assert manifest.load_manifest(str(tmp_path)) == listed
  assert manifest.split_shards(listed, "d", "train") == ["d/train-0.tfrecord",
                                                         "/abs/train-1.tfrecord"]
  assert manifest.split_shards({"shards": ["p-0.tfrecord"]}, "d") == ["d/p-0.tfrecord"]
  with pytest.raises(ValueError, match=r"d holds splits \['test', 'train'\]: pass split="):
    manifest.split_shards(listed, "d")
  with pytest.raises(ValueError, match="has no split 'extra'"):
    manifest.split_shards(listed, "d", "extra")
  assert manifest.load_manifest(str(tmp_path / "nothing")) is None


def test_a_split_of_other_class_names_is_refused():
  from data import manifest  # pylint: disable=g-import-not-at-top
  merged = manifest.merge_split(None, "train", {"num_examples": 2}, ["cat", "dog"])
  assert (merged["class_names"], merged["num_classes"]) == (["cat", "dog"], 2)
  merged = manifest.merge_split(merged, "test", {"num_examples": 1}, ["cat", "dog"])
  assert sorted(merged["splits"]) == ["test", "train"]
  with pytest.raises(ValueError, match="split 'extra' has classes"):
    manifest.merge_split(merged, "extra", {}, ["dog", "cat"])
