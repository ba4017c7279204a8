"""The pure robustness summaries, against hand computation, NumPy/SciPy restatements of the
published formulas and the figures Hendrycks & Dietterich (ICLR 2019) print."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from noisy_student import robustness_metrics as metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_module_imports_no_tensorflow():
  code = "import sys, noisy_student.robustness_metrics; print('tensorflow' in sys.modules)"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
  assert result.stdout.strip() == "False"


# ---- Relative to a baseline ----

def test_flip_rate_on_hand_made_predictions():
  assert metrics.flip_rate([[0, 0, 1, 1, 0]]) == 2 / 4
  assert metrics.flip_rate([[0, 1, 1, 1]]) == 1 / 3
  assert metrics.flip_rate([[0, 1, 1, 1]], compare_to="first") == 1.0
  assert metrics.flip_rate([[0, 1, 0, 0]], compare_to="first") == 1 / 3
  assert metrics.flip_rate([[0, 0, 0], [0, 1, 0]]) == 0.5
  with pytest.raises(ValueError):
    metrics.flip_rate([[1]])
  with pytest.raises(ValueError):
    metrics.flip_rate([[1, 2]], compare_to="last")


def test_mean_corruption_error_against_hand_computation():
  errors = {"a": {"1": 0.2, "2": 0.4}, "b": {"1": 0.1, "2": 0.3}}
  baseline = {"a": {1: 0.4, 2: 0.8}, "b": {"1": 0.2, "2": 0.2, "3": 0.9}}
  summary = metrics.mean_corruption_error(errors, baseline)
  assert summary["corruption_error"] == pytest.approx({"a": 0.3, "b": 0.2})
  assert summary["mean_error"] == pytest.approx(0.25)
  assert summary["ce"] == pytest.approx({"a": 0.5, "b": 1.0})
  assert summary["mce"] == pytest.approx(0.75)
  assert "ce" not in metrics.mean_corruption_error(errors)
  with pytest.raises(ValueError, match="no error for b at severity 2"):
    metrics.mean_corruption_error(errors, {"a": baseline["a"], "b": {"1": 0.5}})


def test_mean_flip_rate_against_hand_computation():
  summary = metrics.mean_flip_rate({"rotate": 0.1, "scale": 0.3}, {"rotate": 0.2, "scale": 0.2})
  assert summary["mean_flip_rate"] == pytest.approx(0.2)
  assert summary["relative_flip_rates"] == pytest.approx({"rotate": 0.5, "scale": 1.5})
  assert summary["mfr"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="baseline's scale flip rate is 0"):
    metrics.mean_flip_rate({"scale": 0.1}, {"scale": 0.0})


# ---- The AlexNet table against the paper's printed figures ----

# Appendix D: AlexNet's mean error (%) over severities 1-5, in IMAGENET_C_CORRUPTIONS order.
PAPER_ALEXNET_MEANS = (88.6, 89.4, 92.3, 82.0, 82.6, 78.6, 79.8, 86.7, 82.7, 81.9, 56.5, 85.3,
                       64.6, 71.8, 60.7)


def test_alexnet_severity_errors_average_to_the_papers_figures():
  for name, printed in zip(metrics.IMAGENET_C_CORRUPTIONS, PAPER_ALEXNET_MEANS):
    assert 100 * np.mean(metrics.ALEXNET_C_ERRORS[name]) == pytest.approx(printed, abs=0.0501)
  assert set(metrics.ALEXNET_C_ERRORS) == set(metrics.IMAGENET_C_CORRUPTIONS)
  assert set(metrics.ALEXNET_P_FLIP_PROBABILITY) == set(metrics.ALEXNET_P_TOP5_DISTANCE) == set(
      metrics.IMAGENET_P_PERTURBATIONS + metrics.IMAGENET_P_EXTRA)


# ---- ImageNet-C ----

def _random_errors(names, seed=0):
  rng = np.random.default_rng(seed)
  return {name: {str(s): float(rng.uniform(0.2, 0.9)) for s in range(1, 6)} for name in names}


def test_imagenet_c_mce_is_the_published_formula():
  errors = _random_errors(metrics.IMAGENET_C_CORRUPTIONS + metrics.IMAGENET_C_EXTRA)
  summary = metrics.imagenet_c_summary(errors)
  expected = {}
  for name in metrics.IMAGENET_C_CORRUPTIONS:  # CE_c = sum_s E / sum_s E(AlexNet)
    mine = np.array([errors[name][str(s)] for s in range(1, 6)])
    expected[name] = mine.sum() / np.sum(metrics.ALEXNET_C_ERRORS[name])
  assert summary["ce"] == pytest.approx(expected, rel=1e-12)
  assert summary["mce"] == pytest.approx(np.mean(list(expected.values())), rel=1e-12)
  for name, mean in metrics.ALEXNET_C_EXTRA_MEAN_ERRORS.items():  # beside, not in the mean
    assert summary["extra_ce"][name] == pytest.approx(
        np.mean(list(errors[name].values())) / mean, rel=1e-12)
  assert summary["complete"] and summary["missing"] == []
  standard = [e for n in metrics.IMAGENET_C_CORRUPTIONS for e in errors[n].values()]
  assert summary["mean_error"] == pytest.approx(np.mean(standard))


def test_imagenet_c_partial_sets_say_so_and_divide_by_the_same_severities():
  summary = metrics.imagenet_c_summary({"fog": {"2": 0.5, 4: 0.7}, "saturate": {"1": 0.3}})
  alexnet_fog = metrics.ALEXNET_C_ERRORS["fog"]
  assert summary["ce"] == pytest.approx({"fog": 1.2 / (alexnet_fog[1] + alexnet_fog[3])})
  assert summary["mce"] == pytest.approx(summary["ce"]["fog"])
  assert summary["extra_ce"] == pytest.approx({"saturate": 0.3 / 0.658})
  assert not summary["complete"] and "fog/1" in summary["missing"]
  assert len(summary["missing"]) == 15 * 5 - 2
  with pytest.raises(ValueError, match="'haze' is not an ImageNet-C corruption"):
    metrics.imagenet_c_summary({"haze": {"1": 0.5}})
  with pytest.raises(ValueError, match="severities must be 1-5"):
    metrics.imagenet_c_summary({"fog": {"6": 0.5}})
  assert metrics.imagenet_c_summary({"spatter": {"1": 0.3}})["mce"] is None


def test_relative_mce_reproduces_the_papers_resnet50_row():
  # Table 1 prints ResNet-50's CEs (clean error 23.9%), Table 2 its relative CEs. Rebuilding the
  # error sums from the rounded CEs leaves each relative CE within 2 points of the printed one.
  printed_ce = (80, 82, 83, 75, 89, 78, 80, 78, 75, 66, 57, 71, 85, 77, 77)
  printed_relative = (104, 107, 107, 97, 126, 107, 110, 101, 97, 79, 62, 89, 146, 111, 132)
  errors = {}
  for name, ce in zip(metrics.IMAGENET_C_CORRUPTIONS, printed_ce):
    per_severity = ce / 100 * np.sum(metrics.ALEXNET_C_ERRORS[name]) / 5
    errors[name] = {str(s): per_severity for s in range(1, 6)}
  summary = metrics.imagenet_c_summary(errors, clean_error=0.239)
  assert 100 * summary["mce"] == pytest.approx(76.7, abs=0.3)
  for name, relative in zip(metrics.IMAGENET_C_CORRUPTIONS, printed_relative):
    assert 100 * summary["relative_ce"][name] == pytest.approx(relative, abs=2.0), name
  assert 100 * summary["relative_mce"] == pytest.approx(105.0, abs=0.5)


# ---- ImageNet-P ----

def _paper_top5_distance(reference_logits, logits):
  """d = sum_{i=1..5} sum_{j=min(i, s(i))+1}^{max(i, s(i))} 1(1 <= j - 1 <= 5) with s = the rank in
  x' of the class ranked i in x; ranks as ImageNet-P/test.py: rankdata(-logits, 'ordinal')."""
  rank_x = stats.rankdata(-reference_logits, method="ordinal")
  rank_y = stats.rankdata(-logits, method="ordinal")
  by_rank_x = np.argsort(rank_x)  # class ranked i + 1 in x
  total = 0
  for i in range(1, 6):
    sigma = rank_y[by_rank_x[i - 1]]
    total += sum(1 <= j - 1 <= 5 for j in range(min(i, sigma) + 1, max(i, sigma) + 1))
  return total


def test_top5_distance_is_the_papers_double_sum():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(40, 12))
  b = a + rng.normal(scale=0.7, size=a.shape)
  b[:5] = a[:5]  # unchanged: distance 0
  a[5:10, :4] = 1.0  # ties, broken towards the lower class as 'ordinal' does
  b[10:15] = -a[10:15]  # reversed
  expected = [_paper_top5_distance(x, y) for x, y in zip(a, b)]
  np.testing.assert_array_equal(metrics.top5_distance(a, b), expected)
  assert metrics.top5_distance(a, b)[:5].tolist() == [0] * 5
  assert max(expected) > 10


def test_sequence_stability_compares_noise_with_the_first_frame_and_others_with_the_last():
  logits = np.zeros((4, 6))
  logits[[0, 1, 2, 3], [0, 1, 1, 0]] = 1.0  # top-1: 0, 1, 1, 0
  flips, distance = metrics.sequence_stability(logits, noise=False)
  assert flips == pytest.approx(2 / 3)
  expected = np.mean([_paper_top5_distance(logits[t - 1], logits[t]) for t in (1, 2, 3)])
  assert distance == pytest.approx(expected)
  flips, distance = metrics.sequence_stability(logits, noise=True)
  assert flips == pytest.approx(2 / 3)  # frames 1 and 2 differ from frame 0, frame 3 does not
  expected = np.mean([_paper_top5_distance(logits[0], logits[t]) for t in (1, 2, 3)])
  assert distance == pytest.approx(expected)
  with pytest.raises(ValueError, match="T >= 2"):
    metrics.sequence_stability(logits[:1], noise=True)


def test_imagenet_p_normalisation_reproduces_the_papers_resnet18_scale_figures():
  # Section 4: ResNet-18 on Scale has FP 15.6% and uT5D 3.6; Tables 3 and 4 print FR 66, T5D 80.
  summary = metrics.imagenet_p_summary({"scale": 0.156, "shear": 0.05}, {"scale": 3.6,
                                                                        "shear": 1.0})
  assert 100 * summary["flip_rate"]["scale"] == pytest.approx(66, abs=0.5)
  assert 100 * summary["top5_distance"]["scale"] == pytest.approx(80, abs=0.5)
  assert summary["mfr"] == summary["flip_rate"]["scale"]
  assert summary["extra_flip_rate"] == pytest.approx({"shear": 0.05 / 0.1066})
  assert summary["extra_top5_distance"] == pytest.approx({"shear": 1.0 / 2.48})
  assert not summary["complete"] and "translate" in summary["missing"]


def test_imagenet_p_mfr_averages_the_ten_standard_perturbations():
  rng = np.random.default_rng(1)
  names = metrics.IMAGENET_P_PERTURBATIONS + metrics.IMAGENET_P_EXTRA
  flips = {p: float(rng.uniform(0.01, 0.3)) for p in names}
  distances = {p: float(rng.uniform(0.5, 5)) for p in names}
  summary = metrics.imagenet_p_summary(flips, distances)
  assert summary["mfr"] == pytest.approx(np.mean(
      [flips[p] / metrics.ALEXNET_P_FLIP_PROBABILITY[p] for p in metrics.IMAGENET_P_PERTURBATIONS]))
  assert summary["mt5d"] == pytest.approx(np.mean(
      [distances[p] / metrics.ALEXNET_P_TOP5_DISTANCE[p]
       for p in metrics.IMAGENET_P_PERTURBATIONS]))
  assert set(summary["extra_flip_rate"]) == set(metrics.IMAGENET_P_EXTRA)
  assert summary["complete"]
  with pytest.raises(ValueError, match="'tilt_shift' is not an ImageNet-P perturbation"):
    metrics.imagenet_p_summary({"tilt_shift": 0.1}, {"tilt_shift": 1.0})


# ---- ImageNet-A and the printed summary ----

def test_subset_logits_restricts_the_argmax():
  logits = np.array([[0.0, 9.0, 1.0, 2.0], [5.0, 0.0, 1.0, 0.5]])
  assert metrics.subset_logits(logits, [0, 2, 3]).argmax(axis=1).tolist() == [2, 0]
  with pytest.raises(ValueError):
    metrics.subset_logits(logits, [4])


def test_headline_keeps_the_figures_present():
  shown = metrics.headline({"imagenet_a": {"top1": 0.8, "top5": 0.9, "loss": 1.0},
                            "imagenet_c": {"mce": 0.3, "complete": False},
                            "fgsm": {"accuracy": {"1": 0.5}}})
  assert shown == {"imagenet_a_top1": 0.8, "imagenet_a_top5": 0.9, "imagenet_c_mce": 0.3,
                   "imagenet_c_complete": False, "fgsm_accuracy": {"1": 0.5}}
