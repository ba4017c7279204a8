"""Tests for data/randaugment.py against independent re-statements of each op.

Oracles: Pillow where the reference equals PIL (Equalize, Invert, Posterize, Solarize,
Brightness). Where the reference differs from PIL, the oracle is a NumPy re-statement of the
*reference's* definition, written here:
  - AutoContrast: float32 arithmetic (PIL uses float64, one level apart on some values);
  - Color, Contrast: TF's `rgb_to_grayscale` (PIL's "L" has other weights and rounding), and
    Contrast's gray of min(255, H*W/256) instead of a mean;
  - Sharpness: truncation and an unsmoothed 1-pixel border (PIL's filter rounds);
  - SolarizeAdd, Cutout and the geometric ops: TF's pixel-centre convention (PIL's affine
    transforms sample at pixel centres + 0.5).
Pixel ops must match exactly; geometric ops on at least 99% of pixels (ties in the rounding).
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from scipy import stats

from data import randaugment as ra

FACTORS = [0.0, 0.1, 0.46, 1.0, 1.18, 1.9, 4.96]


def _noise(height=32, width=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _natural(height=32, width=32, seed=0):
  """Smooth, low-contrast content with uneven histograms, unlike uniform noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width]
  base = 60 + 40 * np.sin(x[..., None] / 5.0 + np.arange(3)) + 30 * np.cos(y[..., None] / 7.0)
  return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _pil(fn, image, *args):
  return np.asarray(fn(Image.fromarray(image), *args))


def _blend(image1, image2, factor):
  image1, image2 = image1.astype(np.float32), image2.astype(np.float32)
  return np.clip(image1 + np.float32(factor) * (image2 - image1), 0, 255).astype(np.uint8)


def _tf_gray(image):
  """tf.image.rgb_to_grayscale: [0, 1] floats, weights .2989/.587/.114, back via * 255.5."""
  x = image.astype(np.float32) * np.float32(1 / 255)
  gray = x[..., 0] * np.float32(0.2989) + x[..., 1] * np.float32(0.587)
  gray = gray + x[..., 2] * np.float32(0.114)
  return (gray * np.float32(255.5)).astype(np.uint8)


def _warp(image, source):
  """Nearest-neighbour pull: output (x, y) reads input at source(x, y); outside is 128."""
  height, width = image.shape[:2]
  y, x = np.mgrid[:height, :width].astype(np.float64)
  source_x, source_y = source(x, y)
  # Ties round away from zero, as C's round() in TF's kernel.
  col, row = [(np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(int) for v in (source_x, source_y)]
  inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
  out = np.full_like(image, 128)
  out[inside] = image[row[inside], col[inside]]
  return out


def _rotate(image, degrees):
  center_x, center_y = (image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2
  cos, sin = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
  return _warp(image, lambda x, y: (cos * (x - center_x) - sin * (y - center_y) + center_x,
                                    sin * (x - center_x) + cos * (y - center_y) + center_y))


def _cutout(image, pad, row, col):
  out = image.copy()
  out[max(0, row - pad):row + pad, max(0, col - pad):col + pad] = 128
  return out


def _equal_fraction(a, b):
  return np.mean(np.all(np.asarray(a) == np.asarray(b), axis=-1))


# Pixel ops: exact.

@pytest.mark.parametrize("image", [_noise(), _natural(40, 24), _natural(seed=1) // 3 + 100])
def test_equalize_matches_pil(image):
  np.testing.assert_array_equal(ra.equalize(image), _pil(ImageOps.equalize, image))


def test_equalize_keeps_single_valued_channels():
  image = _natural()
  image[..., 1] = 77
  np.testing.assert_array_equal(ra.equalize(image), _pil(ImageOps.equalize, image))


def test_invert_matches_pil():
  np.testing.assert_array_equal(ra.invert(_noise()), _pil(ImageOps.invert, _noise()))


@pytest.mark.parametrize("bits", range(1, 9))
def test_posterize_matches_pil(bits):
  image = _noise()
  np.testing.assert_array_equal(ra.posterize(image, bits), _pil(ImageOps.posterize, image, bits))


@pytest.mark.parametrize("threshold", [0, 1, 128, 179, 255, 256])
def test_solarize_matches_pil(threshold):
  image = _noise()
  expected = _pil(ImageOps.solarize, image, threshold)
  np.testing.assert_array_equal(ra.solarize(image, threshold), expected)


@pytest.mark.parametrize("factor", FACTORS)
def test_brightness_matches_pil(factor):
  image = _noise()
  expected = _pil(lambda im: ImageEnhance.Brightness(im).enhance(factor), image)
  np.testing.assert_array_equal(ra.brightness(image, factor), expected)


@pytest.mark.parametrize("image", [_noise(), _natural(), _natural(40, 24) // 2 + 60])
def test_autocontrast_matches_float32_restatement(image):
  lo = image.min(axis=(0, 1)).astype(np.float32)
  hi = image.max(axis=(0, 1)).astype(np.float32)
  scale = np.float32(255) / np.maximum(hi - lo, np.float32(1))
  stretched = np.clip(image.astype(np.float32) * scale + -lo * scale, 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(ra.autocontrast(image), np.where(hi > lo, stretched, image))


def test_autocontrast_keeps_constant_channels():
  image = _natural()
  image[..., 2] = 9
  np.testing.assert_array_equal(ra.autocontrast(image)[..., 2], image[..., 2])


@pytest.mark.parametrize("factor", FACTORS)
def test_color_blends_from_tf_grayscale(factor):
  image = _noise(seed=2)
  gray = np.repeat(_tf_gray(image)[..., None], 3, axis=-1)
  np.testing.assert_array_equal(ra.color(image, factor), _blend(gray, image, factor))


@pytest.mark.parametrize("size", [(32, 32), (224, 224), (300, 300)])
@pytest.mark.parametrize("factor", [0.1, 1.9])
def test_contrast_blends_from_pixel_count_gray(size, factor):
  image = _noise(*size)
  gray = np.full_like(image, int(min(255.0, size[0] * size[1] / 256)))
  np.testing.assert_array_equal(ra.contrast(image, factor), _blend(gray, image, factor))


@pytest.mark.parametrize("factor", [0.1, 1.9])
def test_contrast_fixed_blends_from_rounded_mean_gray(factor):
  image = _natural(seed=3)
  gray = np.full_like(image, int(np.floor(_tf_gray(image).astype(np.float64).mean() + 0.5)))
  actual = ra.contrast(image, factor, fix_reference_quirks=True)
  np.testing.assert_array_equal(actual, _blend(gray, image, factor))


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("image", [_noise(seed=4), _natural(40, 24) // 13 * 13])
def test_sharpness_blends_from_truncated_smooth(factor, image):
  height, width = image.shape[:2]
  weights = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]])
  total = sum(weights[i, j] * image[i:height - 2 + i, j:width - 2 + j].astype(np.int64)
              for i in range(3) for j in range(3))
  smooth = image.copy()
  smooth[1:-1, 1:-1] = total // 13
  np.testing.assert_array_equal(ra.sharpness(image, factor), _blend(smooth, image, factor))


@pytest.mark.parametrize("addition", [0, 55, 110, 297])
def test_solarize_add(addition):
  image = _noise(seed=5)
  added = np.minimum(image.astype(np.int64) + addition, 255).astype(np.uint8)
  expected = np.where(image < 128, added, image)
  np.testing.assert_array_equal(ra.solarize_add(image, addition), expected)


# Geometric ops: at least 99% of pixels.

GEOMETRY = [
    (ra.rotate, _rotate, [30.0, -30.0, 81.0]),
    (ra.shear_x, lambda im, s: _warp(im, lambda x, y: (x + s * y, y)), [0.3, -0.81]),
    (ra.shear_y, lambda im, s: _warp(im, lambda x, y: (x, y + s * x)), [0.3, -0.81]),
    (ra.translate_x, lambda im, p: _warp(im, lambda x, y: (x + p, y)), [4.0, -13.5, 100.0]),
    (ra.translate_y, lambda im, p: _warp(im, lambda x, y: (x, y + p)), [4.0, -13.5, 100.0]),
]


@pytest.mark.parametrize("op, oracle, args", GEOMETRY, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("size", [(32, 32), (40, 24)])
def test_geometric_op_matches_nearest_restatement(op, oracle, args, size):
  image = _noise(*size, seed=6)
  for arg in args:
    assert _equal_fraction(op(image, arg), oracle(image, arg)) >= 0.99, arg


def test_rotate_is_counter_clockwise():
  image = np.zeros((9, 9, 3), np.uint8)
  image[0, 4] = 255
  assert np.argwhere(ra.rotate(image, 90.0).numpy()[..., 0] == 255).tolist() == [[4, 0]]


@pytest.mark.parametrize("pad", [0, 4, 10, 40])
def test_cutout_is_a_clipped_gray_square_at_some_centre(pad):
  image = _noise(32, 24, seed=7) // 2  # no 128s, so the square is visible
  actual = ra.cutout(image, pad, tf.constant([3, 4])).numpy()
  assert any(np.array_equal(actual, _cutout(image, pad, row, col))
             for row in range(32) for col in range(24))


def test_cutout_centre_depends_on_seed_only():
  image = _noise()
  first = ra.cutout(image, 4, tf.constant([1, 2]))
  np.testing.assert_array_equal(first, ra.cutout(image, 4, tf.constant([1, 2])))
  assert any(not np.array_equal(first, ra.cutout(image, 4, tf.constant([1, s])))
             for s in range(3, 8))


# Magnitude -> argument (`OPS`), including M > 10.

@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness", "Sharpness"])
def test_enhance_ops_are_identity_at_magnitude_5(name):
  image = _noise()
  np.testing.assert_array_equal(ra.OPS[name](image, 5), image)


@pytest.mark.parametrize("magnitude, bits", [(0, 1), (2, 1), (5, 2), (9, 3), (10, 4), (18, 7),
                                             (20, 8), (24, 1), (27, 1), (28, 1)])
def test_posterize_magnitude_literal(magnitude, bits):
  image = _noise()
  np.testing.assert_array_equal(ra.OPS["Posterize"](image, magnitude), ra.posterize(image, bits))


@pytest.mark.parametrize("magnitude, bits", [(0, 1), (10, 4), (20, 8), (27, 8)])
def test_posterize_magnitude_fixed(magnitude, bits):
  image = _noise()
  actual = ra.OPS["Posterize"](image, magnitude, fix_reference_quirks=True)
  np.testing.assert_array_equal(actual, ra.posterize(image, bits))


@pytest.mark.parametrize("magnitude, threshold", [(5, 128), (9, 230), (10, 0), (12, 51),
                                                  (15, 128), (27, 179), (28, 204)])
def test_solarize_magnitude_literal_wraps(magnitude, threshold):
  image = _noise()
  expected = _pil(ImageOps.solarize, image, threshold)
  np.testing.assert_array_equal(ra.OPS["Solarize"](image, magnitude), expected)


def test_solarize_at_magnitude_10_is_invert_unless_fixed():
  image = _noise()
  np.testing.assert_array_equal(ra.OPS["Solarize"](image, 10), ra.invert(image))
  for magnitude in (10, 27):
    fixed = ra.OPS["Solarize"](image, magnitude, fix_reference_quirks=True)
    np.testing.assert_array_equal(fixed, image)


def test_contrast_fix_changes_the_gray():
  image = _natural()
  literal = ra.OPS["Contrast"](image, 27)
  fixed = ra.OPS["Contrast"](image, 27, fix_reference_quirks=True)
  np.testing.assert_array_equal(literal, ra.contrast(image, 2.7 * 1.8 + 0.1))
  assert not np.array_equal(literal, fixed)


def test_solarize_add_and_cutout_sizes_from_magnitude():
  image = _noise() // 2
  np.testing.assert_array_equal(ra.OPS["SolarizeAdd"](image, 27), ra.solarize_add(image, 297))
  seed = tf.constant([5, 6])
  np.testing.assert_array_equal(ra.OPS["Cutout"](image, 27, seed=seed),
                                ra.cutout(image, 10, seed))  # int(2.7 * 4), cutout_const = 32 // 8


@pytest.mark.parametrize("name, op, scale", [("Rotate", ra.rotate, 30.0),
                                             ("ShearX", ra.shear_x, 0.3),
                                             ("ShearY", ra.shear_y, 0.3),
                                             ("TranslateX", ra.translate_x, 4.0),
                                             ("TranslateY", ra.translate_y, 4.0)])
def test_signed_ops_use_both_signs(name, op, scale):
  image = _noise()
  candidates = {sign: op(image, sign * scale).numpy() for sign in (1, -1)}
  seen = set()
  for seed in range(12):
    actual = ra.OPS[name](image, 10, seed=tf.constant([seed, 0])).numpy()
    seen |= {sign for sign, expected in candidates.items() if np.array_equal(actual, expected)}
  assert seen == {1, -1}


def test_magnitude_may_be_a_tensor():
  image = _noise()
  for name in ("Posterize", "Solarize", "Color", "Rotate", "TranslateY", "Cutout"):
    seed = tf.constant([7, 7])
    np.testing.assert_array_equal(ra.OPS[name](image, tf.constant(27), seed=seed),
                                  ra.OPS[name](image, 27.0, seed=seed))


@pytest.mark.parametrize("size, expected", [((32, 32), (4, 4)), ((28, 30), (3, 3)),
                                            ((224, 224), (100, 40)), ((448, 500), (200, 80))])
def test_default_constants(size, expected):
  np.testing.assert_allclose(ra.default_constants(*size), expected)


def test_translate_default_is_100_pixels_at_224():
  image = _noise(224, 224)
  actual = ra.OPS["TranslateX"](image, 10, seed=tf.constant([0, 1]))
  assert any(np.array_equal(actual, ra.translate_x(image, p)) for p in (100.0, -100.0))


# randaugment

@pytest.mark.parametrize("size", [(32, 32), (224, 224), (40, 24)])
def test_randaugment_keeps_shape_and_dtype(size):
  image = _noise(*size)
  for seed in range(3):
    out = ra.randaugment(image, 2, 27, seed=tf.constant([seed, 9]))
    assert out.shape == size + (3,) and out.dtype == tf.uint8


def test_randaugment_rejects_float_images():
  with pytest.raises(TypeError):
    ra.randaugment(_noise().astype(np.float32), 2, 9, seed=tf.constant([0, 0]))


def test_randaugment_is_seeded():
  image = _noise()
  outputs = [ra.randaugment(image, 2, 27, seed=tf.constant([s, 0])).numpy() for s in range(4)]
  np.testing.assert_array_equal(outputs[0], ra.randaugment(image, 2, 27, seed=[0, 0]))
  assert len({o.tobytes() for o in outputs}) > 1


# Oracle: the module's own eager call (two paths agree: tf.data = eager); against PIL: above.
def test_randaugment_in_tf_data_matches_eager_with_dynamic_shapes():
  images = [_noise(32, 32, seed=1), _noise(36, 20, seed=2), _noise(24, 40, seed=3)]

  def augment(index, image):
    seed = tf.stack([tf.constant(11, tf.int64), index])
    return ra.randaugment(image, 2, 27, seed=seed, fix_reference_quirks=True)

  dataset = tf.data.Dataset.from_generator(
      lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  dataset = dataset.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  for index, actual in enumerate(dataset):
    np.testing.assert_array_equal(actual, augment(tf.constant(index, tf.int64), images[index]))


def test_randaugment_batch_uses_per_image_seeds():
  images = np.stack([_noise(seed=s) for s in range(3)])
  seed = tf.constant([4, 2])
  actual = ra.randaugment_batch(images, 2, 15, seed=seed)
  for index, image in enumerate(images):
    image_seed = tf.random.experimental.stateless_fold_in(seed, index)
    np.testing.assert_array_equal(actual[index], ra.randaugment(image, 2, 15, seed=image_seed))


# RandAugment as a whole: which ops, and how each layer picks one.

# The reference's op list, written out from google-research/noisystudent randaugment.py
# `available_ops` (with --cutout_op, its default): the 16 ops of tensorflow/tpu (reference digest
# efficientnet-and-randaugment.md section 6.1), but with SolarizeAdd before Cutout.
REFERENCE_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                 "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                 "TranslateX", "TranslateY", "SolarizeAdd", "Cutout"]
# Chi-square tests reject uniformity below this p-value. The draws come from fixed seeds, so
# each test's p-value is a fixed number: the test is repeatable, and a true uniform draw fails it
# with probability 0.001 over the choice of seeds only.
SIGNIFICANCE = 1e-3


def test_ops_are_the_references_16_in_its_order():
  assert list(ra.OPS) == REFERENCE_OPS


def _layer_choices(num_layers, count, stream):
  """[count, num_layers] op indices of `count` images seeded as the training pipeline seeds
  them, [stream, image index], computed in a tf.data map as in training."""
  seeds = tf.data.Dataset.range(count).map(lambda i: tf.stack([tf.constant(stream, tf.int64), i]))
  choices = seeds.map(lambda s: tf.stack([c for c, _ in ra.layer_choices(s, num_layers)]))
  return next(iter(choices.batch(count))).numpy()


def test_each_layer_chooses_uniformly_among_the_16_ops():
  choices = _layer_choices(1, 16 * 250, stream=3)[:, 0]  # 250 expected per op
  counts = np.bincount(choices, minlength=16)
  assert len(counts) == 16 and counts.min() > 0  # indices are in [0, 16), every op is drawn
  assert stats.chisquare(counts).pvalue > SIGNIFICANCE, counts


def test_two_layers_choose_independently():
  choices = _layer_choices(2, 256 * 40, stream=4)  # 40 expected per (first, second) pair
  for layer in range(2):
    assert stats.chisquare(np.bincount(choices[:, layer], minlength=16)).pvalue > SIGNIFICANCE
  # Uniform over all 256 pairs: fails if a layer repeats or follows the other's choice.
  pairs = np.bincount(choices[:, 0] * 16 + choices[:, 1], minlength=256)
  assert len(pairs) == 256
  assert stats.chisquare(pairs).pvalue > SIGNIFICANCE
  # The same op twice has probability 1/16 for independent layers (640 expected of 10,240).
  assert 500 < np.sum(choices[:, 0] == choices[:, 1]) < 780


def test_randaugment_applies_the_chosen_ops_in_order():
  image = _natural()
  chosen = set()
  for index in range(10):
    seed = tf.constant([index, 5])
    expected = image
    for choice, op_seed in ra.layer_choices(seed, 2):
      chosen.add(REFERENCE_OPS[int(choice)])
      expected = ra.OPS[REFERENCE_OPS[int(choice)]](expected, 13, seed=op_seed)
    np.testing.assert_array_equal(ra.randaugment(image, 2, 13, seed=seed), expected)
  assert len(chosen) >= 8  # enough different ops that a wrong index -> op mapping shows
