"""data.preprocess: crop arithmetic, legacy bicubic, normalisation, seeded augmentation."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import preprocess

RNG = np.random.default_rng(0)


def _encode(pixels, fmt="PNG"):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt, quality=95)
  return tf.constant(buffer.getvalue())


def _denormalize(image, config):
  return image.numpy() * np.float32(config.std) + np.float32(config.mean)


def _legacy_resize(pixels, size):
  return tf.compat.v1.image.resize_bicubic(pixels[None].astype(np.float32), [size, size])[0]


def test_resize_bicubic_equals_tf1_resize_bicubic_and_differs_from_tf2():
  pixels = RNG.integers(0, 256, (37, 23, 3), dtype=np.uint8)
  ours = preprocess.resize_bicubic(pixels, 32).numpy()
  np.testing.assert_array_equal(ours, _legacy_resize(pixels, 32).numpy())
  assert np.abs(ours - tf.image.resize(pixels, [32, 32], "bicubic").numpy()).max() > 1
  assert ours.min() < 0 or ours.max() > 255  # overshoot is kept, as in the reference


@pytest.mark.parametrize("shape,size", [((300, 200, 3), 224), ((37, 50, 3), 32), ((41, 41, 3), 8)])
def test_eval_transform_center_crop_matches_numpy_restatement(shape, size):
  pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
  config = preprocess.PreprocessConfig(size)
  height, width = shape[:2]
  crop = int(np.float32(size / (size + 32)) * np.float32(min(height, width)))
  top, left = ((height - crop) + 1) // 2, ((width - crop) + 1) // 2
  expected = _legacy_resize(pixels[top:top + crop, left:left + crop], size).numpy()
  got = _denormalize(preprocess.eval_transform(_encode(pixels), config), config)
  np.testing.assert_allclose(got, expected, atol=1e-3)


def test_eval_transform_jpeg_crops_while_decoding_like_full_decode():
  pixels = RNG.integers(0, 256, (120, 90, 3), dtype=np.uint8)
  encoded = _encode(pixels, "JPEG")
  config = preprocess.PreprocessConfig(64)
  y, x, h, w = (int(v) for v in preprocess.center_crop_window(tf.constant([120, 90, 3]), 64))
  full = tf.io.decode_jpeg(encoded, channels=3).numpy()[y:y + h, x:x + w]
  got = _denormalize(preprocess.eval_transform(encoded, config), config)
  np.testing.assert_allclose(got, _legacy_resize(full, 64).numpy(), atol=1e-3)


def test_normalize_uses_mean_and_std_on_the_255_scale():
  config = preprocess.PreprocessConfig(2, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
  got = preprocess.normalize(tf.fill([2, 2, 3], 40), config).numpy()
  np.testing.assert_allclose(got[0, 0], [15.0, 5.0, 2.0])
  imagenet = preprocess.PreprocessConfig(2)
  np.testing.assert_allclose(preprocess.normalize(tf.fill([1, 1, 3], 255.0), imagenet)[0, 0],
                             (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225],
                             rtol=1e-6)


def test_small_image_eval_is_identity_and_resizes_other_sizes():
  pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  config = preprocess.PreprocessConfig(32, small_image=True, mean=preprocess.SVHN_MEAN,
                                       std=preprocess.SVHN_STD)
  got = _denormalize(preprocess.eval_transform(_encode(pixels), config), config)
  np.testing.assert_allclose(got, pixels, atol=1e-4)
  gray = RNG.integers(0, 256, (28, 28), dtype=np.uint8)  # Fashion-MNIST
  got = _denormalize(preprocess.eval_transform(_encode(gray), config), config)
  expected = _legacy_resize(np.repeat(gray[..., None], 3, -1), 32).numpy()
  np.testing.assert_allclose(got, expected, atol=1e-3)


# Oracle: its own eager call (two paths agree: tf.data = eager); against NumPy: the crop tests.
@pytest.mark.parametrize("config", [
    preprocess.PreprocessConfig(32, small_image=True, cutout=True, flip=False),
    preprocess.PreprocessConfig(32, small_image=True, randaugment_layers=2,
                                randaugment_magnitude=27, cutout=True),
    preprocess.PreprocessConfig(48, randaugment_layers=1, randaugment_magnitude=9),
])
def test_train_transform_is_a_function_of_the_seed_eagerly_and_in_tf_data(config):
  encoded = _encode(RNG.integers(0, 256, (28, 40, 3), dtype=np.uint8))
  seeds = tf.constant([[1, 2], [1, 3], [1, 2]], tf.int64)
  eager = [preprocess.train_transform(encoded, s, config).numpy() for s in seeds[:2]]
  assert eager[0].shape == (config.image_size, config.image_size, 3)
  assert eager[0].dtype == np.float32
  assert not np.array_equal(eager[0], eager[1])
  mapped = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: preprocess.train_transform(encoded, s, config), num_parallel_calls=2)
  for got, want in zip(mapped.as_numpy_iterator(), eager + eager[:1]):
    np.testing.assert_array_equal(got, want)


def test_small_image_train_cutout_paints_one_gray_square_then_pads_and_crops():
  config = preprocess.PreprocessConfig(32, small_image=True, cutout=True, flip=False,
                                       mean=(0.0,) * 3, std=(1.0,) * 3)
  white = _encode(np.full((32, 32, 3), 255, np.uint8))
  for seed in range(5):
    got = preprocess.train_transform(white, tf.constant([seed, 0]), config).numpy()
    gray = np.all(got == 128, axis=-1)
    assert np.all((got == 128) | (got == 255))
    rows, cols = np.nonzero(gray)
    # At most the 16x16 square, plus what the reflect padding mirrors back in (4 px a side).
    assert 0 < gray.sum() and np.ptp(rows) < 16 + 4 and np.ptp(cols) < 16 + 4


@pytest.mark.parametrize("size", [16, 32, 64])
def test_small_image_train_pads_in_proportion_to_the_size_and_crops(size):
  """Oracle: NumPy's reflect pad of image_size // 8 (the reference's 4 at 32) and a crop at some
  offset in [0, 2 * pad]. The pixels code their position, so each output names its offset; over
  40 seeds the offsets reach beyond what a fixed 4 px pad allows at 64 and stay within 2 at 16."""
  pad = size // 8
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  pixels = np.stack([rows * 4 + 3, cols * 4 + 3, np.zeros_like(rows)], -1).astype(np.uint8)
  padded = np.pad(pixels, [(pad, pad), (pad, pad), (0, 0)], mode="reflect")
  config = preprocess.PreprocessConfig(size, small_image=True, flip=False, mean=(0.0,) * 3,
                                       std=(1.0,) * 3)
  offsets = set()
  for seed in range(40):
    got = preprocess.train_transform(_encode(pixels), tf.constant([seed, 1]), config).numpy()
    found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
             if np.array_equal(got, padded[dy:dy + size, dx:dx + size])]
    assert found, seed
    offsets.update(found)
  largest_shift = max(abs(offset - pad) for dy_dx in offsets for offset in dy_dx)
  if size <= 32:
    assert largest_shift == pad  # the whole padding is used
  else:
    assert largest_shift > 4  # beyond a fixed 4 px pad


def test_large_image_train_falls_back_to_the_eval_crop_when_sampling_fails():
  # No crop of area >= 8% with aspect in [3/4, 4/3] fits a 10x400 image: the sampler gives up.
  pixels = RNG.integers(0, 256, (10, 400, 3), dtype=np.uint8)
  config = preprocess.PreprocessConfig(16, flip=False)
  got = preprocess.train_transform(_encode(pixels), tf.constant([3, 4]), config)
  np.testing.assert_allclose(got, preprocess.eval_transform(_encode(pixels), config), atol=1e-5)


SIZE = 16  # the size eval's path gives; the images are 12-64 pixels a side


# Oracle: its own eval_pixels (two paths agree: served pixels = eval's decoded file); against NumPy:
# test_eval_transform_center_crop_matches_numpy_restatement.
@pytest.mark.parametrize("small_image", [False, True])
def test_eval_image_pixels_is_eval_pixels_of_the_decoded_file(small_image):
  """The uint8 endpoint's preprocessing against eval's, on lossless files of other sizes."""
  config = preprocess.PreprocessConfig(image_size=SIZE, small_image=small_image)
  rng = np.random.default_rng(1)
  for height, width in ((SIZE, SIZE), (12, 40), (33, 17), (64, 64)):
    pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
    encoded = tf.io.encode_png(pixels)
    np.testing.assert_array_equal(preprocess.eval_image_pixels(tf.constant(pixels), config),
                                  preprocess.eval_pixels(encoded, config))
