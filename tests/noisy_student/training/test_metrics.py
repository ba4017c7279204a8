"""noisy_student/training/metrics.py: accuracy over the labeled rows only, by hand."""

import keras
import numpy as np

from noisy_student.training import metrics


def test_labeled_accuracy_counts_the_labeled_rows_at_the_top_of_each_batch():
  metric = metrics.LabeledAccuracy(4)
  eye = np.eye(3, dtype=np.float32)
  # 4 labeled rows (3 right), then 4 pseudo-labeled rows, all wrong: they must not count.
  y_true = eye[[0, 1, 2, 0, 1, 1, 1, 1]]
  y_pred = eye[[0, 1, 2, 2, 0, 0, 0, 0]] * 5
  metric.update_state(y_true, y_pred)
  assert float(metric.result()) == 0.75
  metric.update_state(eye[[2, 2, 2, 2, 0, 0, 0, 0]], eye[[2, 2, 0, 1, 0, 0, 0, 0]])
  assert float(metric.result()) == (3 + 2) / 8


def test_labeled_accuracy_round_trips_its_config():
  metric = metrics.LabeledAccuracy(6, name="labeled_top1")
  restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
  assert isinstance(restored, metrics.LabeledAccuracy)
  assert (restored.labeled_batch_size, restored.name) == (6, "labeled_top1")
