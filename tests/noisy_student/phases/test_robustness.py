"""The robustness phase: corruptions, perturbations and FGSM generated from an eval split, a
pre-made corrupted set, and ImageNet-A, -C and -P in their released layouts with a 1,000-class
model, each against an independent oracle (NumPy, PIL, a hand-computed gradient; the published
formulas restated in NumPy)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import corruptions
from data import preprocess
from noisy_student import plots
from noisy_student.phases import robustness
from tests.data.test_corruptions import _textured  # the same textured images


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


# Oracle: data/corruptions' eager corrupt (two paths agree: the tf.data loop = eager); against
# independent ones: test_fgsm_matches_a_hand_computed_gradient_sign, the published figures.
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


# Oracle: corruptions.perturb and robustness.flip_rate, eagerly (two paths agree: the tf.data
# loop = eager); flip_rate's own oracle: tests/noisy_student/test_robustness_metrics.py.
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
        from tests.data.test_released_sets import (  # pylint: disable=g-import-not-at-top
            write_lossless_mp4)
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
