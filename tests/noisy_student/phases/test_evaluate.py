"""noisy_student.phases.evaluate.classification_metrics against a NumPy oracle written here.

The oracle is argmax semantics stated with NumPy's own ranking: top-1 is `np.argmax`, top-5 the
first five of `np.argsort(-logits, kind="stable")` (ties go to the lower class index in both),
and a row with any NaN or +-inf logit is wrong at every k.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from noisy_student import plots
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


# Eval: confusion matrix and calibration, from the logits eval already has.


def _random_logits(seed, count=500, num_classes=7):
  """Random logits with rows of ties at the top and a few NaN and +-inf rows."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2, (count, num_classes)).astype(np.float32)
  labels = rng.integers(0, num_classes, count)
  logits[:60] = np.round(logits[:60])  # ties, resolved towards the lower class index
  logits[60:64, 2] = np.nan
  logits[64:66, 0] = np.inf
  logits[66:68, 1] = -np.inf
  return logits, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_counts_true_by_predicted_finite_rows(seed):
  logits, labels = _random_logits(seed)
  metrics = evaluate.classification_metrics(logits, labels)
  num_classes = logits.shape[1]
  expected = np.zeros((num_classes, num_classes), np.int64)
  for row, label in zip(logits, labels):
    if np.isfinite(row).all():
      expected[label, int(np.argmax(row))] += 1  # argmax: the first of tied maxima
  matrix = np.array(metrics["confusion_matrix"])
  np.testing.assert_array_equal(matrix, expected)
  # Non-finite rows are in no cell and wrong: the trace is top-1's count exactly.
  assert matrix.sum() == len(labels) - metrics["num_non_finite"] == len(labels) - 8
  assert matrix.trace() == round(metrics["top1"] * len(labels))


def _three_class_logits(confidence):
  """Logits whose softmax is (confidence, rest / 2, rest / 2): class 0 at that confidence."""
  rest = (1 - confidence) / 2
  return np.log([confidence, rest, rest])


def test_ece_of_hand_made_logits_is_the_hand_computed_value():
  # (confidence of class 0, label): bin [0.9, 1) holds 3 rows, 2 right: |2 - 2.85| = 0.85;
  # bin [0.6, 0.7) 2 rows, 1 right: |1 - 1.3| = 0.3; bin [0.3, 0.4) 1 row, right: |1 - 0.35| =
  # 0.65. ECE = (0.85 + 0.3 + 0.65) / 6 = 0.3. The NaN row counts nowhere.
  rows = [(0.95, 0), (0.95, 0), (0.95, 1), (0.65, 0), (0.65, 2), (0.35, 0)]
  logits = np.array([_three_class_logits(c) for c, _ in rows] + [[np.nan, 0, 0]])
  labels = np.array([label for _, label in rows] + [0])
  metrics = evaluate.classification_metrics(logits, labels)
  assert metrics["ece"] == pytest.approx(0.3, abs=1e-12)
  bins = metrics["calibration"]
  assert bins["bin_edges"] == pytest.approx([b / 10 for b in range(11)], abs=0)
  assert bins["count"] == [0, 0, 0, 1, 0, 0, 2, 0, 0, 3]
  assert bins["accuracy"][3] == 1 and bins["accuracy"][6] == 0.5
  assert bins["accuracy"][9] == pytest.approx(2 / 3, abs=1e-12)
  assert bins["confidence"][9] == pytest.approx(0.95, abs=1e-12)
  assert [bins["accuracy"][b] for b in (0, 1, 2, 4, 5, 7, 8)] == [None] * 7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_a_numpy_oracle(seed):
  logits, labels = _random_logits(seed)
  logits *= np.float32(seed + 1)  # sharper logits fill the upper bins
  metrics = evaluate.classification_metrics(logits, labels)
  finite = np.isfinite(logits).all(axis=1)
  z = logits[finite].astype(np.float64)
  probabilities = np.exp(z - z.max(axis=1, keepdims=True))
  probabilities /= probabilities.sum(axis=1, keepdims=True)
  confidence = probabilities.max(axis=1)
  correct = probabilities.argmax(axis=1) == labels[finite]
  ece, counts = 0.0, []
  for b in range(10):
    low, high = b / 10, (b + 1) / 10
    inside = (confidence >= low) & ((confidence < high) if b < 9 else (confidence <= high))
    counts.append(int(inside.sum()))
    if inside.any():
      ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
  assert metrics["calibration"]["count"] == counts and sum(counts) == finite.sum()
  assert metrics["ece"] == pytest.approx(ece, abs=1e-12)


def test_metrics_json_has_one_line_per_matrix_row_and_reads_back_equal():
  metrics = evaluate.classification_metrics(*_random_logits(3))
  text = evaluate.metrics_json(metrics)
  assert json.loads(text) == json.loads(json.dumps(metrics))
  lines = text.splitlines()
  start = lines.index(' "confusion_matrix": [')
  for row, line in zip(metrics["confusion_matrix"], lines[start + 1:]):
    assert json.loads(line.strip().rstrip(",")) == row


def test_save_metrics_writes_the_confusion_matrix_and_reliability_plots(tmp_path, monkeypatch):
  figures = {}
  save = plots._save  # pylint: disable=protected-access

  def capture(figure, path):
    figures[os.path.basename(path)] = [
        ([t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.texts],
         [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [])
        for ax in figure.axes]
    return save(figure, path)

  monkeypatch.setattr(plots, "_save", capture)
  logits, labels = _random_logits(4, num_classes=3)
  names = ["cat", "dog", "bird"]
  metrics = evaluate.classification_metrics(logits, labels)
  evaluate.save_metrics(metrics, str(tmp_path), class_names=names)
  assert sorted(os.listdir(tmp_path)) == ["confusion_matrix.png", "metrics.json",
                                          "per_class_accuracy.png", "reliability.png"]
  (ticks, cells, _), _ = figures["confusion_matrix.png"]  # the matrix, its colour bar
  assert ticks == names
  assert sorted(cells, key=int) == sorted(
      (str(c) for c in np.array(metrics["confusion_matrix"]).ravel() if c), key=int)
  (_, _, legend), _ = figures["reliability.png"]
  assert "filter threshold 0.3" in legend
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["ece"] == metrics["ece"]
  # Per-class accuracy by name, in metrics.json and on the plot: each name's value is its index's.
  assert saved["per_class_accuracy"] == {names[int(c)]: value
                                         for c, value in metrics["per_class_accuracy"].items()}
  (ticks, _, _), = figures["per_class_accuracy.png"]
  assert ticks == list(saved["per_class_accuracy"])


@pytest.mark.parametrize("names", [None, ["a", "a", "b"]])
def test_per_class_keys_stay_class_numbers_without_one_name_per_class(tmp_path, names):
  logits, labels = _random_logits(5, num_classes=3)
  metrics = evaluate.classification_metrics(logits, labels)
  evaluate.save_metrics(metrics, str(tmp_path), class_names=names)
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["per_class_accuracy"] == metrics["per_class_accuracy"]
  assert sorted(saved["per_class_accuracy"]) == sorted({str(c) for c in labels})
