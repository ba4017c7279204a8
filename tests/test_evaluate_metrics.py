"""noisy_student.phases.evaluate.classification_metrics against a NumPy oracle written here.

The oracle is argmax semantics stated with NumPy's own ranking: top-1 is `np.argmax`, top-5 the
first five of `np.argsort(-logits, kind="stable")` (ties go to the lower class index in both),
and a row with any NaN or +-inf logit is wrong at every k.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from noisy_student.phases import evaluate

NUM_CLASSES = 10


def _oracle(logits, labels):
  """(top-1 correct, top-5 correct, finite) per row, from NumPy's argmax and stable argsort."""
  logits = np.asarray(logits)
  finite = np.isfinite(logits).all(axis=1)
  top1 = (np.argmax(logits, axis=1) == labels) & finite
  top5 = (np.argsort(-logits, axis=1, kind="stable")[:, :5] == labels[:, None]).any(axis=1)
  return top1, top5 & finite, finite


def _check_against_oracle(logits, labels):
  metrics = evaluate.classification_metrics(logits, labels)
  top1, top5, finite = _oracle(logits, labels)
  assert metrics["num_examples"] == len(labels)
  assert metrics["num_non_finite"] == int((~finite).sum())
  # Shares of whole counts: the only error is the float division (and NumPy's mean of booleans
  # is the same count / N), hence 1e-12.
  assert metrics["top1"] == pytest.approx(top1.sum() / len(labels), abs=1e-12)
  assert metrics["top5"] == pytest.approx(top5.sum() / len(labels), abs=1e-12)
  present = np.unique(labels)
  assert sorted(metrics["per_class_accuracy"]) == sorted(str(c) for c in present)
  for c in present:
    assert metrics["per_class_accuracy"][str(c)] == pytest.approx(
        top1[labels == c].sum() / np.sum(labels == c), abs=1e-12)
  return metrics, top1, top5


def _logits_with_edge_rows(seed):
  """Random float32 logits, then rows of ties, all-equal rows, NaN and +-inf rows, shuffled."""
  rng = np.random.default_rng(seed)
  count = 400
  logits = rng.normal(0, 2, (count, NUM_CLASSES)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, count)
  # Rounded to a coarse grid: many rows tie somewhere, often at the top.
  logits[:80] = np.round(logits[:80])
  # Ties at the top between the true class and a class below or above it.
  for row in range(80, 140):
    other = (labels[row] + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES
    logits[row, [labels[row], other]] = logits[row].max() + 1
  # -0.0 and 0.0 compare equal: a tie, not an order.
  logits[140:150] = -1.0
  logits[140:150, :2] = [-0.0, 0.0]
  labels[140:150] = np.arange(10) % 2
  logits[150:170] = rng.choice([-3.5, 0.0, 7.0], 20)[:, None]  # all-equal rows
  # Non-finite rows, some with the true class far ahead of the others (argmax would be right).
  for row, value in zip(range(170, 230), [np.nan, np.inf, -np.inf] * 20):
    logits[row, rng.integers(0, NUM_CLASSES)] = value
  logits[230:240, :] = np.nan
  rows = np.arange(240, 250)
  logits[rows] = -5.0
  logits[rows, labels[rows]] = 5.0
  logits[rows, (labels[rows] + 1) % NUM_CLASSES] = -np.inf
  order = rng.permutation(count)
  return logits[order], labels[order]


# +inf - inf in the loss's max shift: the NaN that the loss is meant to show.
NON_FINITE_WARNING = "ignore:invalid value encountered in subtract:RuntimeWarning"


@pytest.mark.filterwarnings(NON_FINITE_WARNING)
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_numpy_argmax_oracle_with_ties_and_non_finite_rows(seed):
  logits, labels = _logits_with_edge_rows(seed)
  metrics, top1, top5 = _check_against_oracle(logits, labels)
  finite = np.isfinite(logits).all(axis=1)
  assert metrics["num_non_finite"] == 80
  # The edge rows are in play: ties decided both ways, non-finite rows whose argmax is right.
  ties = (logits == logits.max(axis=1, keepdims=True)).sum(axis=1) > 1
  assert 0 < top1[ties & finite].sum() < (ties & finite).sum()
  assert (np.argmax(logits, axis=1) == labels)[~finite].sum() >= 10 and not top1[~finite].any()
  assert top5.sum() > top1.sum()


def test_ties_go_to_the_lower_class_index():
  logits = np.array([[1.0, 3.0, 3.0, 0.0]] * 2 + [[2.0] * 4] * 4 + [[-0.0, 0.0, -1.0, -1.0]] * 2)
  labels = np.array([1, 2, 0, 1, 2, 3, 0, 1])
  metrics, top1, _ = _check_against_oracle(logits, labels)
  assert top1.tolist() == [True, False, True, False, False, False, True, False]
  assert metrics["top1"] == pytest.approx(3 / 8, abs=1e-12)
  assert metrics["top5"] == pytest.approx(1.0, abs=1e-12)  # 4 classes: every class is in the top 5


def test_top5_ties_at_the_fifth_place_go_to_the_lower_index():
  # Class 7 first, then nine classes tied at 0 of which 0-3 take places 2-5. Labels are skewed
  # to low classes so that ties broken the other way give another top-5 share (2 / 11).
  labels = np.array([0, 1, 2, 3, 3, 7, 4, 5, 6, 8, 9])
  logits = np.zeros((len(labels), NUM_CLASSES))
  logits[:, 7] = 1.0
  metrics, _, top5 = _check_against_oracle(logits, labels)
  assert top5.tolist() == [True] * 6 + [False] * 5
  assert metrics["top5"] == pytest.approx(6 / 11, abs=1e-12)


@pytest.mark.filterwarnings(NON_FINITE_WARNING)
def test_loss_is_the_mean_cross_entropy_and_nan_with_a_nan_row():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 3, (64, NUM_CLASSES))
  labels = rng.integers(0, NUM_CLASSES, 64)
  expected = np.mean(special.logsumexp(logits, axis=1) - logits[np.arange(64), labels])
  # Both in float64, summed in different orders: 1e-12 relative.
  assert evaluate.classification_metrics(logits, labels)["loss"] == pytest.approx(expected,
                                                                                  rel=1e-12)
  for value in (np.nan, np.inf):
    broken = logits.copy()
    broken[5, 3] = value
    assert np.isnan(evaluate.classification_metrics(broken, labels)["loss"])


def _labels_with_known_shares():
  """120 labels: 18 of class 0, 30 of classes 1-4, 72 of classes 5-9; shuffled."""
  labels = np.concatenate([np.zeros(18), np.arange(1, 5).repeat(8)[:30],
                           np.arange(5, 10).repeat(15)[:72]]).astype(np.int64)
  return np.random.default_rng(3).permutation(labels)


def _model(bias):
  """A model whose logits are `bias` whatever the image: zero kernel."""
  inputs = keras.Input((16, 16, 3))
  pooled = keras.layers.GlobalAveragePooling2D()(inputs)
  outputs = keras.layers.Dense(NUM_CLASSES, kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(bias))(pooled)
  return keras.Model(inputs, outputs)


def _dataset(labels):
  images = np.random.default_rng(4).normal(0, 1, (len(labels), 16, 16, 3)).astype(np.float32)
  return tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)


@pytest.mark.parametrize("value", [0.0, 2.5])
def test_a_model_with_all_equal_logits_scores_the_share_of_class_0(value):
  labels = _labels_with_known_shares()
  metrics = evaluate.evaluate(_model(value), _dataset(labels))
  # Counts / 120: exact up to the division.
  assert metrics["top1"] == pytest.approx(18 / 120, abs=1e-12)
  assert metrics["top5"] == pytest.approx(48 / 120, abs=1e-12)
  assert metrics["num_non_finite"] == 0 and metrics["num_examples"] == 120
  assert metrics["per_class_accuracy"] == {str(c): float(c == 0) for c in range(NUM_CLASSES)}
  # Uniform over 10 classes: every row's loss is log(10); 1e-12 covers rounding in the mean.
  assert metrics["loss"] == pytest.approx(np.log(NUM_CLASSES), rel=1e-12)


def test_a_model_with_nan_logits_scores_zero():
  labels = _labels_with_known_shares()
  metrics = evaluate.evaluate(_model(float("nan")), _dataset(labels))
  assert metrics["top1"] == 0.0 and metrics["top5"] == 0.0
  assert metrics["num_non_finite"] == 120 and metrics["num_examples"] == 120
  assert metrics["per_class_accuracy"] == {str(c): 0.0 for c in range(NUM_CLASSES)}
  assert np.isnan(metrics["loss"])
