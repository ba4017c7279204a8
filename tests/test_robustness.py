"""The robustness phase: corruptions, perturbations and FGSM generated from an eval split, a
pre-made corrupted set, and ImageNet-A, -C and -P in their released layouts with a 1,000-class
model, each against an independent oracle (NumPy, PIL, a hand-computed gradient; the published
formulas restated in NumPy)."""

import json
import os

import keras
import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
import tensorflow as tf

from data import corruptions
from data import preprocess
from noisy_student import plots
from noisy_student.phases import robustness

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


# ---- Model-based evaluation ----

def _linear_model(shape, weights, bias):
  model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                            keras.layers.Dense(len(bias))])
  model.layers[-1].set_weights([weights, bias])
  return model


def _normalize(x):
  return x / 255.0


def _softmax(z):
  z = np.exp(z - z.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def test_fgsm_matches_a_hand_computed_gradient_sign():
  rng = np.random.default_rng(1)
  shape, classes = (4, 4, 3), 3
  weights = rng.normal(size=(48, classes)).astype(np.float32)
  bias = np.array([0.1, -0.1, 0.0], np.float32)
  model = _linear_model(shape, weights, bias)
  images = rng.integers(0, 256, size=(10,) + shape).astype(np.uint8)
  images[:, 0, 0] = [0, 255, 3]  # clipping at both ends
  flat = images.reshape(10, -1).astype(np.float64) / 255
  labels = (flat @ weights + bias).argmax(axis=1)
  labels[:2] = (labels[:2] + 1) % classes  # two already misclassified
  # d CE / d x = (1 / 255) W (softmax(z) - onehot(y)), z = x W / 255 + b.
  residual = _softmax(flat @ weights + bias) - np.eye(classes)[labels]
  sign = np.sign(residual @ weights.T).reshape(images.shape)
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
  result = robustness.fgsm_accuracy(model, dataset, _normalize, epsilons=(2, 16))
  for epsilon in (2, 16):
    expected = np.clip(images + epsilon * sign, 0, 255)
    adversarial = robustness.fgsm_attack(model, images, labels, _normalize, epsilon).numpy()
    np.testing.assert_allclose(adversarial, expected)
    predicted = (expected.reshape(10, -1) / 255 @ weights + bias).argmax(axis=1)
    assert result["accuracy"][str(epsilon)] == pytest.approx((predicted == labels).mean())
  assert result["clean_accuracy"] == pytest.approx(((flat @ weights + bias).argmax(1) == labels)
                                                   .mean())
  assert result["num_examples"] == 10 and result["clean_accuracy"] == pytest.approx(0.8)
  assert result["accuracy"]["16"] < result["accuracy"]["2"] <= result["clean_accuracy"]


def _brightness_model(size):
  """Class 1 iff the mean pixel is above half scale: errors follow brightness exactly."""
  weights = np.tile(np.array([[-1.0, 1.0]], np.float32) / (size * size * 3), (size * size * 3, 1))
  return _linear_model((size, size, 3), weights, np.array([0.5, -0.5], np.float32))


def _brightness_dataset(count=12, size=16):
  rng = np.random.default_rng(2)
  images = np.stack([_textured(size, batch=1, seed=i)[0] for i in range(count)])
  images = np.clip(images.astype(np.int32) + rng.integers(-60, 60, (count, 1, 1, 1)), 0, 255)
  labels = rng.integers(0, 2, count)
  return images.astype(np.uint8), labels


def _predicted_bright(images):
  return (np.asarray(images, np.float64).mean(axis=(-3, -2, -1)) > 127.5).astype(int)


def test_corruption_errors_match_an_eager_recomputation():
  images, labels = _brightness_dataset()
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(5)  # last batch partial
  result = robustness.corruption_errors(_brightness_model(16), dataset, _normalize,
                                        corruptions=("brightness", "contrast"), severities=(1, 5))
  assert result["clean_error"] == pytest.approx((_predicted_bright(images) != labels).mean())
  for name in ("brightness", "contrast"):  # deterministic, so the seed plays no part
    for severity in (1, 5):
      corrupted = corruptions.corrupt(images, name, severity, 0).numpy()
      expected = (_predicted_bright(corrupted) != labels).mean()
      assert result["errors"][name][str(severity)] == pytest.approx(expected)
  assert result["num_examples"] == 12 and result["severities"] == [1, 5]


def test_flip_rates_match_an_eager_recomputation():
  images, labels = _brightness_dataset()
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)
  result = robustness.flip_rates(_brightness_model(16), dataset, _normalize,
                                 perturbations=("translate", "scale"))
  for name in ("translate", "scale"):
    frames = corruptions.perturb(images, name).numpy()
    expected = robustness.flip_rate(_predicted_bright(frames))
    assert result["flip_rates"][name] == pytest.approx(expected)
  assert result["num_frames"] == {"translate": 16, "scale": 31}
  assert result["mean_flip_rate"] == pytest.approx(np.mean(list(result["flip_rates"].values())))


def test_evaluate_robustness_json_baseline_and_plot(tmp_path):
  images, labels = _brightness_dataset(count=6)
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
  model = _linear_model((16, 16, 3), np.zeros((768, 3), np.float32),
                        np.array([0.0, 1.0, 0.0], np.float32))  # always class 1
  settings = dict(corruptions=("gaussian_noise", "fog"), severities=(1, 2),
                  perturbations=("rotate",), num_frames=3, epsilons=(1, 4))
  teacher = robustness.evaluate_robustness(model, dataset, _normalize,
                                           "corruptions,perturbations,fgsm", **settings)
  teacher = json.loads(json.dumps(teacher, allow_nan=False))
  assert set(teacher) == {"corruptions", "perturbations", "fgsm"}
  error = float((labels != 1).mean())
  assert teacher["corruptions"]["errors"]["fog"] == pytest.approx({"1": error, "2": error})
  assert teacher["perturbations"]["flip_rates"] == {"rotate": 0.0}
  assert teacher["fgsm"]["accuracy"] == pytest.approx({"1": 1 - error, "4": 1 - error})

  student = robustness.evaluate_robustness(
      model, dataset, _normalize, ["corruptions"],
      baseline={"robustness": {"corruptions": teacher["corruptions"]}}, **settings)
  assert student["corruptions"]["ce"] == pytest.approx({"gaussian_noise": 1.0, "fog": 1.0})
  assert student["corruptions"]["mce"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="unknown robustness kind 'noise'"):
    robustness.evaluate_robustness(model, dataset, _normalize, "noise")

  path = str(tmp_path / "robustness.png")
  plots.robustness(student, path, baseline_results=teacher, labels=("student", "teacher"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(tmp_path) == ["robustness.png"]


# ---- Through main.py: a pre-made set of own classes and the released sets ----

def test_table_follows_the_input_size_unless_named():
  assert robustness.table_for(32) == "cifar10-c"
  assert robustness.table_for(224) == "imagenet-c"
  assert robustness.table_for(224, "cifar10-c") == "cifar10-c"
  with pytest.raises(ValueError, match="unknown severity table 'imagenet-p'"):
    robustness.table_for(32, "imagenet-p")


def test_main_eval_of_a_premade_set_matches_the_model_on_the_decoded_images(tmp_path):
  """--corrupted_data through main.py: each folder's error equals the error of the model run
  directly on the PNG pixels (PIL decode, the published ImageNet mean/std), labels by the clean
  eval set's class names; the teacher as its own baseline has mCE 1."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  import efficientnet  # pylint: disable=g-import-not-at-top
  import main  # pylint: disable=g-import-not-at-top
  from data import convert  # pylint: disable=g-import-not-at-top

  def run(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["main.py", *args])
    main.main(["main.py"])

  rng = np.random.default_rng(0)
  # The clean eval set fixes the label order: dog first, against the folders' sorted order.
  np.savez(tmp_path / "clean.npz", images=rng.integers(0, 256, (4, 16, 16, 3), np.uint8),
           labels=[0, 1, 0, 1], class_names=["dog", "cat"])
  convert.convert("npz", str(tmp_path / "clean.npz"), str(tmp_path / "clean"), split="test",
                  num_shards=1)
  images, truth = {}, {}
  for corruption, severities in {"fog": (1, 2), "contrast": (3,)}.items():
    for severity in severities:
      for label, name in ((1, "cat"), (0, "dog")):
        folder = tmp_path / "premade" / corruption / str(severity) / name
        folder.mkdir(parents=True)
        for i in range(5):
          pixels = rng.integers(0, 256, (16, 16, 3), np.uint8)
          Image.fromarray(pixels).save(folder / f"{i}.png")
          images.setdefault((corruption, severity), []).append(pixels)
          truth.setdefault((corruption, severity), []).append(label)
  model = efficientnet.build_model("efficientnet-b0", 2, image_size=16, small_image=True,
                                   width_coefficient=0.1, depth_coefficient=0.1)
  model.save(tmp_path / "model.keras")
  mean = np.array([0.485, 0.456, 0.406]) * 255
  std = np.array([0.229, 0.224, 0.225]) * 255
  args = ["--mode=eval", f"--checkpoint={tmp_path / 'model.keras'}",
          f"--eval_data={tmp_path / 'clean'}", f"--corrupted_data={tmp_path / 'premade'}",
          "--image_size=16", "--small_image", "--normalization=imagenet", "--batch_size=4"]
  run(*args, f"--output={tmp_path / 'teacher'}")
  result = json.loads((tmp_path / "teacher" / "robustness.json").read_text())["corrupted_data"]
  for (corruption, severity), pixels in images.items():
    logits = model.predict((np.stack(pixels) - mean) / std, verbose=0)
    expected = np.mean(np.argmax(logits, -1) != np.array(truth[(corruption, severity)]))
    assert result["errors"][corruption][str(severity)] == pytest.approx(expected)
    assert result["num_examples"][corruption][str(severity)] == 10
  assert set(result["errors"]) == {"fog", "contrast"} and "mce" not in result
  assert (tmp_path / "teacher" / "robustness_corrupted_data.png").exists()
  # metrics.json holds the same results, so either file serves as a baseline.
  saved = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
  assert saved["robustness"]["corrupted_data"]["errors"] == result["errors"]
  run(*args, f"--output={tmp_path / 'student'}",
      f"--robustness_baseline={tmp_path / 'teacher' / 'metrics.json'}")
  student = json.loads((tmp_path / "student" / "robustness.json").read_text())["corrupted_data"]
  assert student["mce"] == pytest.approx(1.0)
  assert student["ce"] == {"fog": pytest.approx(1.0), "contrast": pytest.approx(1.0)}


# ---- ImageNet-A, -C and -P as released, with a 1,000-class model ----

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
  """A tiny 1,000-class EfficientNet at 32 px (ImageNet preprocessing: eval centre crop) and its
  .keras file. The classifier's weights are scaled up so that top-1 margins sit far above float
  rounding (at initialisation the features are ~1e-5)."""
  import efficientnet  # pylint: disable=g-import-not-at-top
  model = efficientnet.build_model("efficientnet-b0", 1000, image_size=32, width_coefficient=0.1,
                                   depth_coefficient=0.1)
  dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
  kernel, bias = dense.get_weights()
  rng = np.random.default_rng(0)
  dense.set_weights([rng.normal(0, 1e5, kernel.shape).astype(np.float32), bias])
  path = tmp_path_factory.mktemp("model") / "imagenet.keras"
  model.save(path)
  return model, str(path)


def _oracle_logits(model, pixels):
  """The model on uint8 pixels already at its input size, normalised with ImageNet's mean/std."""
  return model.predict((np.asarray(pixels, np.float64) - IMAGENET_MEAN) / IMAGENET_STD,
                       verbose=0).astype(np.float64)


def _run_main(*args):
  from absl import flags  # pylint: disable=g-import-not-at-top
  import main  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.check_main_input()
  main.main(["main.py"])


def _printed(capsys):
  out = capsys.readouterr().out
  return json.loads(out[out.index("{"):])


def test_imagenet_a_top1_is_over_its_200_classes_logits(tmp_path, imagenet_model, capsys):
  from data import released_sets  # pylint: disable=g-import-not-at-top
  model, checkpoint = imagenet_model
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (8, 64, 80, 3), np.uint8)
  crops = images[:, 16:48, 24:56]  # the eval crop at 32 px: 32x32 at (16, 24), no resize
  logits = _oracle_logits(model, crops)
  indices = list(released_sets.imagenet_a_indices())
  ids = released_sets.imagenet_a_wnids()
  predicted = logits[:, indices].argmax(axis=1)
  # Six images in the folder of their 200-class prediction, two in the next class's.
  labels = np.where(np.arange(8) < 6, predicted, (predicted + 1) % 200)
  for i, (image, label) in enumerate(zip(images, labels)):
    (tmp_path / "imagenet-a" / ids[label]).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(tmp_path / "imagenet-a" / ids[label] / f"{i}.png")
  (tmp_path / "imagenet-a" / "README.txt").write_text("ImageNet-A")
  _run_main("--mode=eval", f"--checkpoint={checkpoint}", "--normalization=imagenet",
            "--robustness=imagenet_a", f"--eval_data={tmp_path / 'imagenet-a'}",
            f"--output={tmp_path / 'out'}", "--inference_batch_size=3")
  result = json.loads((tmp_path / "out" / "robustness.json").read_text())["imagenet_a"]
  ranks = (logits[:, indices] > logits[:, indices][np.arange(8), labels][:, None]).sum(axis=1)
  assert result["top1"] == pytest.approx(0.75)
  assert result["top5"] == pytest.approx(np.mean(ranks < 5))
  assert result["num_examples"] == 8 and result["num_skipped"] == 0
  # The argmax over all 1,000 logits would be another figure: that is why the 200 are picked.
  assert np.mean(np.array(indices)[labels] == logits.argmax(axis=1)) != pytest.approx(0.75)
  full = json.loads((tmp_path / "out" / "imagenet_a" / "metrics.json").read_text())
  assert full["top1"] == result["top1"] and len(full["confusion_matrix"]) == 200
  assert _printed(capsys)["imagenet_a_top1"] == pytest.approx(0.75)


def test_imagenet_c_ce_and_mce_as_published(tmp_path, imagenet_model, capsys):
  from data import released_sets  # pylint: disable=g-import-not-at-top
  from noisy_student import robustness_metrics  # pylint: disable=g-import-not-at-top
  model, checkpoint = imagenet_model
  rng = np.random.default_rng(2)
  pool = rng.integers(0, 256, (6, 32, 32, 3), np.uint8)  # ImageNet-C's images are crops already
  predicted = _oracle_logits(model, pool).argmax(axis=1)
  wnids = released_sets.imagenet_wnids()
  classes = sorted(set(predicted.tolist()) | {999 if 999 not in predicted else 998})
  other = {c: next(k for k in classes if k != c) for c in classes}
  # (group folder or None, corruption, severity): how many of the pool sit in a wrong folder.
  layout = [("weather", "fog", 1, 0), ("weather", "fog", 3, 3), (None, "contrast", 5, 1),
            ("extra", "saturate", 2, 2)]
  truth = {}
  for group, corruption, severity, wrong in layout:
    folder = tmp_path / "ImageNet-C" / (group or "") / corruption / str(severity)
    for c in classes:
      (folder / wnids[c]).mkdir(parents=True)
    labels = [other[p] if i < wrong else p for i, p in enumerate(predicted)]
    for i, label in enumerate(labels):
      Image.fromarray(pool[i]).save(folder / wnids[label] / f"{i}.png")
    truth.setdefault(corruption, {})[str(severity)] = float(np.mean(np.array(labels) != predicted))
  _run_main("--mode=eval", f"--checkpoint={checkpoint}", "--normalization=imagenet",
            "--robustness=imagenet_c", f"--corrupted_data={tmp_path / 'ImageNet-C'}",
            f"--output={tmp_path / 'out'}")  # no --eval_data: ImageNet-C needs none
  result = json.loads((tmp_path / "out" / "robustness.json").read_text())["imagenet_c"]
  assert result["errors"].keys() == truth.keys()
  for corruption, by_severity in truth.items():
    assert result["errors"][corruption] == pytest.approx(by_severity)
  assert truth["fog"]["3"] == 0.5 and truth["fog"]["1"] == 0.0
  alexnet = robustness_metrics.ALEXNET_C_ERRORS
  expected_ce = {"fog": (0.0 + 0.5) / (alexnet["fog"][0] + alexnet["fog"][2]),
                 "contrast": (1 / 6) / alexnet["contrast"][4]}
  assert result["ce"] == pytest.approx(expected_ce)
  assert result["mce"] == pytest.approx(np.mean(list(expected_ce.values())))
  assert result["extra_ce"] == pytest.approx({"saturate": (2 / 6) / 0.658})
  assert not result["complete"] and result["num_examples"]["fog"] == {"1": 6, "3": 6}
  printed = _printed(capsys)
  assert printed["imagenet_c_mce"] == pytest.approx(result["mce"]) and "top1" not in printed
  assert (tmp_path / "out" / "robustness_imagenet.png").exists()


def test_imagenet_p_flip_rates_and_top5_distances_as_published(tmp_path, imagenet_model,
                                                               capsys):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from data import released_sets  # pylint: disable=g-import-not-at-top
  from noisy_student import robustness_metrics  # pylint: disable=g-import-not-at-top
  model, checkpoint = imagenet_model
  rng = np.random.default_rng(3)
  wnids = released_sets.imagenet_wnids()
  with_mp4 = importlib.util.find_spec("av") is not None
  flips, distances = {}, {}
  for name in ("translate", "gaussian_noise", "shear"):
    per_sequence = []
    for k in range(3):
      # Runs of repeated frames: some pairs keep their prediction, others need not.
      distinct = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
      frames = distinct[[0, 0, 1, 1, 2]]
      folder = tmp_path / "ImageNet-P" / name / wnids[10 * k]
      folder.mkdir(parents=True)
      if with_mp4 and k == 0:  # the released format, lossless so the frames are these
        from tests.test_released_sets import write_lossless_mp4  # pylint: disable=g-import-not-at-top
        write_lossless_mp4(folder / "v.mp4", frames)
      else:
        np.save(folder / "v.npy", frames)
      logits = _oracle_logits(model, frames)
      top1 = logits.argmax(axis=1)
      if name == "gaussian_noise":  # noise: every frame against the first
        pairs = [(0, t) for t in range(1, 5)]
      else:  # temporal: every frame against the one before
        pairs = [(t - 1, t) for t in range(1, 5)]
      per_sequence.append((np.mean([top1[a] != top1[b] for a, b in pairs]),
                           np.mean([_paper_top5_distance(logits[a], logits[b])
                                    for a, b in pairs])))
    flips[name], distances[name] = np.mean(per_sequence, axis=0)
  _run_main("--mode=eval", f"--checkpoint={checkpoint}", "--normalization=imagenet",
            "--robustness=imagenet_p", f"--perturbed_data={tmp_path / 'ImageNet-P'}",
            f"--output={tmp_path / 'out'}", "--inference_batch_size=8")
  result = json.loads((tmp_path / "out" / "robustness.json").read_text())["imagenet_p"]
  assert result["flip_probability"] == pytest.approx(flips)
  assert result["unnormalised_top5_distance"] == pytest.approx(distances)
  fp = robustness_metrics.ALEXNET_P_FLIP_PROBABILITY
  t5d = robustness_metrics.ALEXNET_P_TOP5_DISTANCE
  expected_fr = {p: flips[p] / fp[p] for p in ("translate", "gaussian_noise")}
  assert result["flip_rate"] == pytest.approx(expected_fr)
  assert result["mfr"] == pytest.approx(np.mean(list(expected_fr.values())))
  assert result["mt5d"] == pytest.approx(np.mean(
      [distances[p] / t5d[p] for p in ("translate", "gaussian_noise")]))
  assert result["extra_flip_rate"] == pytest.approx({"shear": flips["shear"] / fp["shear"]})
  assert result["num_sequences"] == {"translate": 3, "gaussian_noise": 3, "shear": 3}
  assert 0 < flips["translate"] < 1  # the sequences do flip, and not always
  assert _printed(capsys)["imagenet_p_mfr"] == pytest.approx(result["mfr"])


def _paper_top5_distance(reference_logits, logits):
  """The paper's d(pi(x), pi(x')) = sum_{i=1..5} sum_{j=min(i, s(i))+1}^{max(i, s(i))}
  1(1 <= j - 1 <= 5), s(i) the rank in x' of the class ranked i in x (ordinal ranks)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rank_x = stats.rankdata(-reference_logits, method="ordinal")
  rank_y = stats.rankdata(-logits, method="ordinal")
  by_rank_x = np.argsort(rank_x)
  total = 0
  for i in range(1, 6):
    sigma = rank_y[by_rank_x[i - 1]]
    total += sum(1 <= j - 1 <= 5 for j in range(min(i, sigma) + 1, max(i, sigma) + 1))
  return total


@pytest.mark.parametrize("args, message", [
    (["--robustness=imagenet_a,fgsm", "--eval_data=/"], "imagenet_a reads --eval_data as"),
    (["--robustness=imagenet_c"], "imagenet_c needs --corrupted_data"),
    (["--robustness=fgsm", "--perturbed_data=x", "--eval_data=x"],
     "--perturbed_data is read by --robustness=imagenet_p only"),
    (["--robustness=imagenet_p", "--perturbed_data=/absent"], "--perturbed_data '/absent'"),
])
def test_released_set_flags_fail_before_work(args, message, imagenet_model, tmp_path):
  _, checkpoint = imagenet_model
  with pytest.raises(SystemExit, match=message):
    _run_main("--mode=eval", f"--checkpoint={checkpoint}", "--normalization=imagenet",
              f"--output={tmp_path}", *args)


def test_released_sets_need_an_imagenet_model(tmp_path):
  import efficientnet  # pylint: disable=g-import-not-at-top
  model = efficientnet.build_model("efficientnet-b0", 10, image_size=32, width_coefficient=0.1,
                                   depth_coefficient=0.1)
  frames = np.zeros((2, 32, 32, 3), np.uint8)
  folder = tmp_path / "p" / "rotate" / "n01440764"
  folder.mkdir(parents=True)
  np.save(folder / "v.npy", frames)
  with pytest.raises(ValueError, match="needs a 1000-class ImageNet model.*has 10"):
    robustness.robustness_phase(model, None, preprocess.PreprocessConfig(image_size=32),
                                str(tmp_path / "out"), ["imagenet_p"],
                                perturbed_data=str(tmp_path / "p"))
