"""The eval phase: top-1, top-5, loss and per-class accuracy of a model on an eval split."""

import json
import os

import numpy as np
import tensorflow as tf

from data import manifest as manifest_lib
from data import pipeline
from data import records
from noisy_student.phases import predict


def classification_metrics(logits, labels):
  """Pure NumPy metrics from all logits [N, C] and integer labels [N].

  Top-k follows argmax semantics: classes are ranked by logit, ties broken towards the lower
  class index (what `np.argmax` and a stable descending sort do), and a row is top-k correct when
  its true class is among the first k. A row with any non-finite logit (NaN, +-inf) is wrong at
  every k: a broken model must never score well. `num_non_finite` counts those rows; the loss is
  what their logits give (NaN for a NaN or +inf logit, so the mean loss shows it too).
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.int64)
  num_classes = logits.shape[1]
  if len(labels) == 0:
    raise ValueError("no examples to evaluate")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must be in [0, {num_classes}); got {labels.min()}..{labels.max()} "
                     "(does the eval data have labels, and the model its classes?)")
  rows = np.arange(len(labels))
  finite = np.isfinite(logits).all(axis=1)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  # Rank of the true class: classes scoring strictly higher, plus equal ones of lower index.
  true_logit = logits[rows, labels][:, None]
  lower_index = np.arange(num_classes)[None, :] < labels[:, None]
  rank = ((logits > true_logit) | ((logits == true_logit) & lower_index)).sum(axis=1)
  correct = (rank == 0) & finite
  per_class = {}
  for c in range(num_classes):
    mask = labels == c
    if mask.any():
      per_class[str(c)] = float(correct[mask].mean())
  return {
      "top1": float(correct.mean()),
      "top5": float(((rank < min(5, num_classes)) & finite).mean()),
      "loss": float(-log_probabilities[rows, labels].mean()),
      "num_examples": int(len(labels)),
      "num_non_finite": int((~finite).sum()),
      "per_class_accuracy": per_class,
  }


def predict_logits(model, dataset):
  """Logits and labels over an (image, label) dataset, inference mode."""
  infer = predict.inference_function(model)
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


def check_eval_sets(num_classes, **data):
  """Fails before any work when an eval set (flag name -> data argument) is missing or has
  another class count than the model."""
  for flag, value in data.items():
    if not value:
      continue
    pipeline.resolve_shards(value)
    manifest = manifest_lib.load_manifest(value) if tf.io.gfile.isdir(value) else None
    classes = (manifest or {}).get("num_classes")
    if classes and classes != num_classes:
      raise ValueError(f"--{flag} {value!r} has {classes} classes but the model has {num_classes}")


def eval_phase(model, prep, output_dir, *, eval_data, validation_data=None, batch_size=256,
               class_names=None, extra=None):
  """The one eval path (main's eval mode, iterate, the end of train): metrics of `model` in
  inference mode on `eval_data`, and on `validation_data` under "validation" (the split choices
  are made on), written to `output_dir`/metrics.json with a per-class plot.

  Args:
    prep: eval `PreprocessConfig` (see checkpoints.eval_preprocessing).
    extra: optional callable(metrics) -> dict merged into the metrics before they are saved
      (eval mode's robustness results).
  """
  metrics = evaluate(model, pipeline.eval_dataset(eval_data, prep, batch_size=batch_size))
  if validation_data:
    metrics["validation"] = {
        k: v for k, v in evaluate(model, pipeline.eval_dataset(
            validation_data, prep, batch_size=batch_size)).items() if k != "per_class_accuracy"}
  if extra is not None:
    metrics.update(extra(metrics))
  save_metrics(metrics, output_dir, class_names=class_names)
  return metrics


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
