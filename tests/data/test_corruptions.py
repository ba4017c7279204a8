"""data/corruptions.py: each corruption and perturbation against its definition (NumPy, SciPy, PIL
restatements of the published formulas), its severities, its seeds and its bad arguments."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import ndimage

from data import corruptions

RANDOM_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog")


def _flat(value, size=32, batch=4):
  return np.full((batch, size, size, 3), value, np.uint8)


def _textured(size=16, batch=4, seed=0):
  """Smooth colour regions plus pixel texture: what a blur, pixelation or JPEG visibly degrades."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(40, 215, (batch, 4, 4, 3)).astype(np.float32)
  smooth = tf.image.resize(coarse, [size, size]).numpy()
  return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).round().astype(np.uint8)


def _apply(name, images, severity, seed=0, **kwargs):
  return corruptions.corrupt(images, name, severity, seed, **kwargs).numpy().astype(np.float64)


def _table(name):
  return corruptions.CIFAR10_C[name]


def _high_frequency_energy(images):
  images = np.asarray(images, np.float64)
  return (np.diff(images, axis=1) ** 2).mean() + (np.diff(images, axis=2) ** 2).mean()


# ---- Each corruption against its definition ----

@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_noise_residual_std_is_sigma(severity):
  residual = _apply("gaussian_noise", _flat(128), severity) - 128
  sigma = _table("gaussian_noise")[severity - 1] * 255
  assert residual.std() == pytest.approx(sigma, rel=0.04)
  assert abs(residual.mean()) < 0.5


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_shot_noise_variance_is_intensity_over_rate(severity):
  # Poisson(v c) / c has variance v / c on the [0, 1] scale.
  value = 128 / 255
  out = _apply("shot_noise", _flat(128), severity) / 255
  rate = _table("shot_noise")[severity - 1]
  assert out.var() == pytest.approx(value / rate, rel=0.08)
  assert out.mean() == pytest.approx(value, abs=0.005)


@pytest.mark.parametrize("severity", [1, 5])
def test_impulse_noise_sets_the_expected_fraction_to_salt_and_pepper(severity):
  out = _apply("impulse_noise", _flat(128), severity)
  amount = _table("impulse_noise")[severity - 1]
  assert np.isin(out, [0, 255, 128]).all()
  assert (out == 255).mean() == pytest.approx(amount / 2, abs=0.004)
  assert (out == 0).mean() == pytest.approx(amount / 2, abs=0.004)


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur", "zoom_blur"])
def test_blurs_keep_flat_images_and_the_mean_and_remove_high_frequencies(name):
  np.testing.assert_array_equal(_apply(name, _flat(90, size=16), 5), _flat(90, size=16))
  images = _textured()
  for severity in (3, 5):
    out = _apply(name, images, severity)
    assert out.mean() == pytest.approx(images.mean(), abs=1.5)
    assert _high_frequency_energy(out) < 0.6 * _high_frequency_energy(images)


def test_motion_blur_smears_a_dot_along_a_line_of_gaussian_taps():
  # ImageMagick: out(p) = sum_i k_i in(p + round(i (cos a, sin a))), k_i ~ exp(-i^2 / 2 sigma^2),
  # i < 2 ceil(radius) + 1, a ~ U(-45, 45) degrees. A dot's mass is kept and moves back along the
  # line by sum_i k_i i, pointing left within 45 degrees.
  radius, sigma = _table("motion_blur")[4]
  taps = np.exp(-np.arange(2 * radius + 1) ** 2 / (2 * sigma ** 2))
  shift = (taps * np.arange(len(taps))).sum() / taps.sum()
  image = np.zeros((1, 41, 41, 3), np.uint8)
  image[0, 20, 20] = 255
  for seed in range(4):
    out = _apply("motion_blur", image, 5, seed=seed)[0, ..., 0]
    assert out.sum() == pytest.approx(255, abs=4)
    x, y = _centroid(out[..., None])
    dx, dy = x - 20, y - 20
    assert np.hypot(dx, dy) == pytest.approx(shift, abs=0.3)
    assert -dx >= abs(dy) - 0.3


def test_zoom_blur_matches_scipy_zoom_restatement():
  # The reference: mean of the image and, per zoom factor, its centre ceil(h / z) pixels zoomed by
  # scipy.ndimage.zoom(order=1) and trimmed back to h.
  images = _textured()
  for severity, (start, stop, step) in enumerate(_table("zoom_blur"), start=1):
    total = images / 255
    for zoom in np.arange(start, stop, step):
      crop = int(np.ceil(16 / zoom))
      top = (16 - crop) // 2
      zoomed = ndimage.zoom(images[:, top:top + crop, top:top + crop] / 255, (1, zoom, zoom, 1),
                            order=1)
      trim = (zoomed.shape[1] - 16) // 2
      total = total + zoomed[:, trim:trim + 16, trim:trim + 16]
    expected = np.round(np.clip(total / (len(np.arange(start, stop, step)) + 1), 0, 1) * 255)
    assert np.abs(_apply("zoom_blur", images, severity) - expected).max() <= 1


def test_contrast_matches_numpy_restatement():
  images = _textured()
  x = images / 255
  means = x.mean(axis=(1, 2), keepdims=True)
  for severity, c in enumerate(_table("contrast"), start=1):
    expected = np.round(np.clip((x - means) * c + means, 0, 1) * 255)
    assert np.abs(_apply("contrast", images, severity) - expected).max() <= 1


def test_brightness_matches_numpy_hsv_restatement():
  # Adding c to HSV value scales R, G and B alike by V' / V, with V = max(R, G, B).
  images = _textured()
  images[0, 0, 0] = 0  # black: hue and saturation are 0, so it turns grey
  x = images / 255
  value = x.max(axis=-1, keepdims=True)
  for severity, c in enumerate(_table("brightness"), start=1):
    new_value = np.minimum(value + c, 1)
    expected = np.where(value > 0, x * new_value / np.maximum(value, 1e-12), new_value)
    expected = np.round(expected * 255)
    assert np.abs(_apply("brightness", images, severity) - expected).max() <= 1


def test_fog_on_a_flat_image_spans_the_reference_formula():
  # (v + s f) v / (v + s) with f normalised to [0, 1]: from v^2 / (v + s) to exactly v.
  value = 150 / 255
  for severity, (strength, _) in enumerate(_table("fog"), start=1):
    out = _apply("fog", _flat(150), severity, seed=severity)
    assert out.max() == pytest.approx(150, abs=0.6)
    assert out.min() == pytest.approx(255 * value ** 2 / (value + strength), abs=0.6)
    # Haze is low frequency: neighbours differ far less than the image's range.
    assert np.abs(np.diff(out, axis=1)).mean() < 0.15 * (out.max() - out.min())


def test_pixelate_matches_pil_box_resizing():
  images = _textured(size=32)
  for severity, c in enumerate(_table("pixelate"), start=1):
    expected = np.stack([
        np.asarray(Image.fromarray(image).resize((int(32 * c),) * 2, Image.BOX)
                   .resize((32, 32), Image.BOX)) for image in images])
    assert np.abs(_apply("pixelate", images, severity) - expected).max() <= 1


def test_pixelate_at_half_size_is_block_means():
  images = _textured()
  out = _apply("pixelate", images, 2, table="imagenet-c")  # c = 0.5
  blocks = images.reshape(4, 8, 2, 8, 2, 3).mean(axis=(2, 4))
  expected = np.round(np.repeat(np.repeat(blocks, 2, axis=1), 2, axis=2))
  assert np.abs(out - expected).max() <= 1


def test_jpeg_changes_the_image_more_at_higher_severity():
  images = _textured(size=32)
  errors = [np.abs(_apply("jpeg_compression", images, s) - images).mean()
            for s in corruptions.SEVERITIES]
  assert errors[0] > 0.5
  assert errors[-1] > errors[0]


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_distortion_grows_with_severity(name):
  images = _textured()
  distortion = [np.abs(_apply(name, images, s) - images).mean() for s in corruptions.SEVERITIES]
  # Non-decreasing: CIFAR-10-C's motion_blur severities 3 and 4, (6, 2) and (8, 2), differ only
  # in taps whose weight is below 1e-8, so they may tie.
  assert all(b >= a * 0.999 for a, b in zip(distortion, distortion[1:])), distortion
  assert distortion[-1] > 1.05 * distortion[0], distortion


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_corruption_is_deterministic_given_a_seed(name):
  images = _textured()
  first = _apply(name, images, 3, seed=[7, 1])
  np.testing.assert_array_equal(first, _apply(name, images, 3, seed=[7, 1]))
  assert first.shape == images.shape
  if name in RANDOM_CORRUPTIONS:
    assert not np.array_equal(first, _apply(name, images, 3, seed=[8, 1]))


# Oracle: the module's own eager call (two paths agree: tf.data = eager); against NumPy: above.
def test_corruptions_run_inside_tf_data_as_eagerly():
  images = _textured(batch=2)
  seed = tf.constant([3, 4])
  mapped = tf.data.Dataset.from_tensors(images).map(
      lambda x: {name: fn(x, 4, seed) for name, fn in corruptions.CORRUPTIONS.items()})
  for name, corrupted in next(iter(mapped)).items():
    np.testing.assert_array_equal(corrupted.numpy(), _apply(name, images, 4, [3, 4]), err_msg=name)


def test_single_images_and_the_imagenet_table():
  image = _textured(batch=1)[0]
  for name in corruptions.CORRUPTIONS:
    out = corruptions.corrupt(image, name, 5, 0, table="imagenet-c")
    assert out.dtype == tf.uint8 and out.shape == image.shape


def test_corrupt_rejects_bad_arguments():
  image = _textured(batch=1)
  with pytest.raises(ValueError, match="unknown corruption 'snow'"):
    corruptions.corrupt(image, "snow", 1, 0)
  for severity in (0, 6, 2.0, True):
    with pytest.raises(ValueError, match="severity"):
      corruptions.corrupt(image, "contrast", severity, 0)
  with pytest.raises(ValueError, match="table"):
    corruptions.corrupt(image, "contrast", 1, 0, table="cifar100-c")
  with pytest.raises(TypeError, match="uint8"):
    corruptions.corrupt(image.astype(np.float32), "contrast", 1, 0)


# ---- Perturbation sequences ----

def _frames(name, images, num_frames=None, seed=0):
  return corruptions.perturb(images, name, num_frames, seed).numpy().astype(np.float64)


def test_translate_moves_one_pixel_per_frame_with_zero_fill():
  images = _textured()
  frames = _frames("translate", images)
  assert frames.shape == (4, 16) + images.shape[1:]
  for t, shift in enumerate(range(-7, 9)):
    expected = np.zeros_like(images)
    if shift >= 0:
      expected[:, :, shift:] = images[:, :, :16 - shift]
    else:
      expected[:, :, :shift] = images[:, :, -shift:]
    np.testing.assert_array_equal(frames[:, t], expected)


def _dot(size=15, x=12, y=7):
  image = np.zeros((size, size, 3), np.uint8)
  image[y, x] = 255
  return image


def _centroid(frame):
  weights = frame.sum(axis=-1)
  ys, xs = np.mgrid[:frame.shape[0], :frame.shape[1]]
  return (xs * weights).sum() / weights.sum(), (ys * weights).sum() / weights.sum()


def test_rotate_turns_about_the_centre_one_degree_per_frame():
  frames = _frames("rotate", _dot())
  np.testing.assert_array_equal(frames[15], _dot())
  for t, degrees in ((0, -15), (30, 15), (20, 5)):
    theta = np.deg2rad(degrees)  # counterclockwise as displayed: y grows downwards
    x, y = _centroid(frames[t])
    assert (x, y) == pytest.approx((7 + 5 * np.cos(theta), 7 - 5 * np.sin(theta)), abs=0.2)


def test_scale_zooms_about_the_centre():
  frames = _frames("scale", _dot())
  np.testing.assert_array_equal(frames[15], _dot())
  for t in (0, 30):
    x, y = _centroid(frames[t])
    assert (x, y) == pytest.approx((7 + 5 * (0.7 + 0.02 * t), 7), abs=0.2)
  flat = _frames("scale", _flat(200, size=15)[0])
  assert flat[0, 0, 0].max() == 0 and flat[0, 7, 7].min() == 200  # zoomed out: black border


def test_noise_frames_start_clean_and_draw_independent_noise():
  images = _flat(128, size=16, batch=2)
  frames = _frames("gaussian_noise", images, seed=5)
  np.testing.assert_array_equal(frames[:, 0], images)
  assert (frames[:, 1:] - 128).std() == pytest.approx(0.02 * 255, rel=0.05)
  assert not np.array_equal(frames[:, 1], frames[:, 2])
  np.testing.assert_array_equal(frames, _frames("gaussian_noise", images, seed=5))
  assert not np.array_equal(frames, _frames("gaussian_noise", images, seed=6))


def test_perturb_validates_num_frames_and_name():
  with pytest.raises(ValueError, match="num_frames"):
    corruptions.perturb(_dot(), "rotate", 1)
  with pytest.raises(ValueError, match="unknown perturbation"):
    corruptions.perturb(_dot(), "tilt")
  assert corruptions.PERTURBATIONS["rotate"](_dot(), 5, 0).shape == (5, 15, 15, 3)
