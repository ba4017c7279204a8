"""The reports people look at: eval's confusion matrix and reliability diagram (ECE), and the
filter's grid of sample pseudo-labeled images, each against an oracle written here."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from data import records
from noisy_student import filter_balance
from noisy_student import plots
from noisy_student.phases import evaluate
from noisy_student.phases import filter_phase


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


# Filter: the grid of sample pseudo-labeled images.


def _selection(labels, confidences, record_ids):
  num_classes = int(labels.max()) + 1
  zeros = np.zeros(num_classes, np.int64)
  return filter_balance.Selection(
      record_ids=np.asarray(record_ids, np.int64), labels=np.asarray(labels, np.int32),
      confidences=np.asarray(confidences, np.float32), copies=np.ones(len(labels), np.int32),
      before_threshold=zeros, after_threshold=zeros,
      kept_unique=np.bincount(labels, minlength=num_classes), with_copies=zeros,
      invalid_probability=0, invalid_label=0, threshold=0.3, images_per_class=None,
      duplicate=False, seed=0)


def _oracle_samples(labels, confidences, record_ids, per_end):
  """Per class: kept records sorted by confidence descending, then id; the ends."""
  found = {}
  for c in sorted(set(labels.tolist())):
    ordered = sorted((-float(np.float32(f)), int(i))
                     for f, i, label in zip(confidences, record_ids, labels) if label == c)
    ids = [i for _, i in ordered]
    found[c] = ids if len(ids) <= 2 * per_end else ids[:per_end] + ids[-per_end:]
  return found


@pytest.mark.parametrize("seed", [0, 1])
def test_report_samples_are_the_most_and_least_confident_kept_per_class(seed):
  rng = np.random.default_rng(seed)
  count = 300
  labels = rng.integers(0, 5, count)
  labels[labels == 4] = 3  # class 4 keeps nothing
  labels[:3] = 4
  confidences = np.round(rng.uniform(0.3, 1, count), 2)  # coarse: many ties
  record_ids = np.sort(rng.choice(10 * count, count, replace=False))
  samples = filter_phase.report_samples(_selection(labels, confidences, record_ids), per_end=8)
  expected = _oracle_samples(labels, confidences, record_ids, 8)
  assert [c for c, _ in samples] == [0, 1, 2, 3, 4]
  for c, ids in samples:
    assert ids.tolist() == expected[c]
  assert len(dict(samples)[4]) == 3  # fewer than 2 x 8: all of them


def test_report_samples_of_many_classes_are_a_seeded_choice_of_classes():
  labels = np.arange(100) % 50
  selection = _selection(labels, np.full(100, 0.5), np.arange(100))
  chosen = [[c for c, _ in filter_phase.report_samples(selection, max_classes=20, seed=s)]
            for s in (0, 0, 1)]
  assert chosen[0] == chosen[1] != chosen[2]
  assert len(chosen[0]) == 20 and chosen[0] == sorted(set(chosen[0]))


NUM_CLASSES = 3


def _png(value):
  """A 4x4 PNG whose pixels are (value % 256, value // 256, 7): it names its record."""
  pixels = np.zeros((4, 4, 3), np.uint8)
  pixels[..., 0], pixels[..., 1], pixels[..., 2] = value % 256, value // 256, 7
  return tf.io.encode_png(pixels).numpy()


def _write_phase_inputs(root, sizes=(70, 50)):
  rng = np.random.default_rng(5)
  os.makedirs(root / "unlabeled")
  os.makedirs(root / "predictions")
  entries, index = [], 0
  for s, size in enumerate(sizes):
    name = f"extra-{s:05d}-of-{len(sizes):05d}.tfrecord"
    unlabeled, predicted = [], []
    for _ in range(size):
      key = f"img{index:04d}".encode()
      probabilities = rng.dirichlet(np.full(NUM_CLASSES, 0.5)).astype(np.float32)
      image = b"not an image" if index == 3 else _png(index)
      unlabeled.append(records.make_example(key=key, image=image))
      predicted.append(records.make_example(
          key=key, label=int(np.argmax(probabilities)), confidence=float(probabilities.max()),
          probabilities=probabilities))
      index += 1
    records.write_atomically(str(root / "unlabeled" / name), unlabeled)
    records.write_atomically(str(root / "predictions" / name), predicted)
    entries.append({"input": str(root / "unlabeled" / name), "output": name, "count": size})
  (root / "predictions" / "summary.json").write_text(
      json.dumps({"shards": entries, "num_classes": NUM_CLASSES}))


def test_filter_writes_a_grid_of_the_most_and_least_confident_kept_images(tmp_path, monkeypatch):
  _write_phase_inputs(tmp_path)
  drawn = []
  draw = plots.pseudo_label_samples
  monkeypatch.setattr(plots, "pseudo_label_samples",
                      lambda rows, path, **kw: (drawn.append(rows), draw(rows, path, **kw))[1])
  out = tmp_path / "out"
  # 30 per class: classes above it are cut to their 30 most confident, those below are filled
  # with copies, which the grid leaves out.
  filter_phase.filter_and_balance_phase(
      str(tmp_path / "predictions"), None, str(out),
      filter_balance.FilterRule(threshold=0.3, images_per_class=30, seed=2), num_shards=2)
  png = (out / filter_phase.SAMPLES_PLOT).read_bytes()
  assert png.startswith(b"\x89PNG")
  # The oracle reads what the filter wrote: every distinct kept record of the output shards.
  kept = {}
  manifest = json.loads((out / "manifest.json").read_text())
  for name in manifest["splits"]["train"]["shards"]:
    for serialized in tf.data.TFRecordDataset(str(out / name)):
      feature = tf.train.Example.FromString(serialized.numpy()).features.feature
      key = feature[records.KEY].bytes_list.value[0].decode()
      kept[key] = (feature[records.LABEL].int64_list.value[0],
                   feature[records.CONFIDENCE].float_list.value[0])
  keys = sorted(kept)  # record order: keys are numbered in it
  labels = np.array([kept[k][0] for k in keys])
  confidences = np.array([kept[k][1] for k in keys], np.float32)
  expected = _oracle_samples(labels, confidences, np.array([int(k[3:]) for k in keys]), 8)
  (rows,) = drawn
  assert [c for c, _ in rows] == list(range(NUM_CLASSES))
  assert any(len(ids) == 16 for ids in expected.values())  # a class shows both ends
  for c, images in rows:
    assert len(images) == len(expected[c])
    for (image, confidence), index in zip(images, expected[c]):
      assert confidence == kept[f"img{index:04d}"][1]
      if index == 3:
        assert image is None  # not decodable: drawn as such
      else:
        np.testing.assert_array_equal(image[0, 0], [index % 256, index // 256, 7])


def test_training_curves_are_drawn_against_data_epochs(tmp_path, monkeypatch):
  """--epochs is data epochs on the curves too: each history row at its steps done over the
  steps of a data epoch (a short last Keras epoch lands at its own fraction), evaluations at
  theirs."""
  from noisy_student import plots  # pylint: disable=g-import-not-at-top
  drawn = []
  monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure))
  history = {"loss": [2.0, 1.5, 1.2], "accuracy": [0.3, 0.5, 0.6],
             "learning_rate": [0.1, 0.1, 0.05], "data_epoch": [4 / 3.8, 8 / 3.8, 9 / 3.8]}
  evaluations = {"split": "validation", "points": [{"keras_epoch": 3, "data_epochs": 9 / 3.8,
                                                    "top1": 0.55}]}
  plots.training_curves(history, str(tmp_path / "curves.png"), evaluations=evaluations)
  left, right = drawn[0].axes[:2]
  assert left.get_xlabel() == right.get_xlabel() == "data epoch"
  np.testing.assert_allclose(left.lines[0].get_xdata(), history["data_epoch"])
  np.testing.assert_allclose(right.lines[1].get_xdata(), [9 / 3.8])
