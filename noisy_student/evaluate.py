"""The eval phase: top-1, top-5, loss and per-class accuracy of a model on an eval split."""

import json
import os

import numpy as np
import tensorflow as tf

from data import records


def classification_metrics(logits, labels):
  """Pure NumPy metrics from all logits [N, C] and integer labels [N]."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.int64)
  num_classes = logits.shape[1]
  if len(labels) == 0:
    raise ValueError("no examples to evaluate")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must be in [0, {num_classes}); got {labels.min()}..{labels.max()} "
                     "(does the eval data have labels, and the model its classes?)")
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  # Rank of the true class: how many classes score strictly higher.
  true_logit = logits[np.arange(len(labels)), labels]
  rank = (logits > true_logit[:, None]).sum(axis=1)
  correct = rank == 0
  per_class = {}
  for c in range(num_classes):
    mask = labels == c
    if mask.any():
      per_class[str(c)] = float(correct[mask].mean())
  return {
      "top1": float(correct.mean()),
      "top5": float((rank < min(5, num_classes)).mean()),
      "loss": float(-log_probabilities[np.arange(len(labels)), labels].mean()),
      "num_examples": int(len(labels)),
      "per_class_accuracy": per_class,
  }


def predict_logits(model, dataset):
  """Logits and labels over an (image, label) dataset, inference mode."""
  infer = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
  logits, labels = [], []
  for images, batch_labels in dataset:
    logits.append(infer(images).numpy())
    labels.append(batch_labels.numpy())
  if not logits:
    raise ValueError("the eval data yielded no examples")
  return np.concatenate(logits), np.concatenate(labels)


def evaluate(model, dataset):
  """Metrics of `model` (EMA weights, inference mode) on an (image, label) dataset."""
  return classification_metrics(*predict_logits(model, dataset))


def save_metrics(metrics, output_dir, name="metrics.json", class_names=None):
  """Writes metrics.json and a per-class accuracy plot beside it (bars named by `class_names`,
  else by class index)."""
  from noisy_student import plots  # pylint: disable=g-import-not-at-top  (matplotlib is slow)
  tf.io.gfile.makedirs(output_dir)
  path = os.path.join(output_dir, name)
  records.write_text_atomically(path, json.dumps(metrics, indent=1) + "\n")
  plots.per_class_accuracy(metrics["per_class_accuracy"],
                           os.path.join(output_dir, "per_class_accuracy.png"),
                           title=f"per-class top-1 (overall {metrics['top1']:.4f})",
                           class_names=class_names)
  return path
