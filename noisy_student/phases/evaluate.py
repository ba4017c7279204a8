"""The eval phase: top-1, top-5, loss, per-class accuracy, the confusion matrix and the
calibration (ECE, reliability diagram) of a model on an eval split, all from one pass of logits."""

import dataclasses
import json
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from data import manifest as manifest_lib
from data import pipeline
from data import records
from noisy_student import distribute
from noisy_student import filter_balance
from noisy_student import inference

# Equal-width confidence bins of [0, 1] for the ECE and the reliability diagram. With 10, the
# filter's threshold, 0.3, is a bin edge: the bins above it are exactly the images it keeps.
CALIBRATION_BINS = 10
PROGRESS_SECONDS = 10  # how often a long eval logs its rate


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How eval runs the model (main's eval mode, iterate's evals; train's own final eval and
  inference check take these from its TrainConfig).

  Attributes:
    batch_size: images per inference batch (--inference_batch_size).
    jit_compile: XLA for the inference step (None: on for GPUs and TPUs).
    mixed_precision: compute dtype the model is loaded with ("none", "bfloat16", "float16");
      logits stay float32.
  """
  batch_size: int = inference.BATCH_SIZE
  jit_compile: bool | None = None
  mixed_precision: str = "none"

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"--inference_batch_size must be >= 1, got {self.batch_size}")
    if self.mixed_precision not in distribute.PRECISION_POLICIES:
      raise ValueError(f"--mixed_precision must be one of {tuple(distribute.PRECISION_POLICIES)}"
                       f", got {self.mixed_precision!r}")


def classification_metrics(logits, labels):
  """Pure NumPy metrics from all logits [N, C] and integer labels [N].

  Top-k follows argmax semantics: classes are ranked by logit, ties broken towards the lower
  class index (what `np.argmax` and a stable descending sort do), and a row is top-k correct when
  its true class is among the first k. A row with any non-finite logit (NaN, +-inf) is wrong at
  every k: a broken model must never score well. `num_non_finite` counts those rows; the loss is
  what their logits give (NaN for a NaN or +inf logit, so the mean loss shows it too).

  The confusion matrix (counts, row = true class, column = predicted class) and the calibration
  (see `calibration`) count the finite rows only: a non-finite row has no predicted class or
  confidence. So the matrix's trace over `num_examples` is top-1 exactly, and its rows sum to
  each class's examples less its non-finite ones.
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
  # The largest log-probability is -log(sum(exp(shifted))): its exp is the softmax's maximum.
  confidences = np.exp(log_probabilities.max(axis=1))
  return {
      "top1": float(correct.mean()),
      "top5": float(((rank < min(5, num_classes)) & finite).mean()),
      "loss": float(-log_probabilities[rows, labels].mean()),
      "num_examples": int(len(labels)),
      "num_non_finite": int((~finite).sum()),
      "per_class_accuracy": per_class,
      "confusion_matrix": confusion_matrix(labels[finite], logits[finite].argmax(axis=1),
                                           num_classes).tolist(),
      **calibration(confidences[finite], correct[finite]),
  }


def confusion_matrix(labels, predicted, num_classes):
  """Counts [C, C] of (true class, predicted class) pairs: row = true class."""
  pairs = np.asarray(labels, np.int64) * num_classes + np.asarray(predicted, np.int64)
  return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def calibration(confidences, correct, bins=CALIBRATION_BINS):
  """Expected calibration error and the reliability diagram's bins (Guo et al. 2017).

  Confidence is the top softmax probability, correct whether its class is the label. Bin b holds
  the confidences in [b / bins, (b + 1) / bins) (the last bin also 1.0). ECE is the mean over
  examples of |accuracy - mean confidence| of their bin, i.e. sum_b |hits_b - confidence_sum_b| /
  N; NaN without examples. Per bin: its count, accuracy and mean confidence (None when empty).
  """
  confidences = np.asarray(confidences, np.float64)
  correct = np.asarray(correct, np.float64)
  edges = np.arange(bins + 1) / bins  # i / bins is the double nearest each edge; linspace's isn't
  index = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, bins - 1)
  counts = np.bincount(index, minlength=bins)
  hits = np.bincount(index, weights=correct, minlength=bins)
  confidence_sums = np.bincount(index, weights=confidences, minlength=bins)
  ece = (float(np.abs(hits - confidence_sums).sum() / len(confidences)) if len(confidences)
         else float("nan"))

  def means(sums):
    return [float(s / n) if n else None for s, n in zip(sums, counts)]

  return {"ece": ece,
          "calibration": {"bin_edges": edges.tolist(), "count": counts.tolist(),
                          "accuracy": means(hits), "confidence": means(confidence_sums)}}


def compact_metrics(metrics):
  """`metrics` without the confusion matrix (C x C counts, kept in metrics.json): what
  history.json and iterate's phase marks copy."""
  return {k: v for k, v in metrics.items() if k != "confusion_matrix"}


def scalar_metrics(metrics):
  """The single numbers of a metrics dict (no per-class values, matrix or bins): what a
  validation entry and train's periodic evaluation keep."""
  return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def predict_logits(model, dataset, *, strategy=None, jit_compile=False, name="eval"):
  """Logits and labels over a batched (image, label) dataset, inference mode, every batch at the
  first's size (`inference.InferenceStep`) under `strategy`. Logs `name`'s images and rate
  every PROGRESS_SECONDS (a large eval set is otherwise minutes of silence)."""
  step, logits, labels, count, start = None, [], [], 0, time.perf_counter()
  for images, batch_labels in dataset:
    if step is None:  # the first batch of a batched dataset is its largest
      step = inference.InferenceStep(model, images.shape[0], strategy=strategy,
                                     jit_compile=jit_compile)
    logits.append(step(images))
    labels.append(batch_labels.numpy())
    count += len(labels[-1])
    logging.log_every_n_seconds(logging.INFO, "%s: %d images, %.1f images/s", PROGRESS_SECONDS,
                                name, count, count / max(time.perf_counter() - start, 1e-9))
  if not logits:
    raise ValueError("the eval data yielded no examples")
  logging.info("%s: %d images, %.1f images/s (done)", name, count,
               count / max(time.perf_counter() - start, 1e-9))
  return np.concatenate(logits), np.concatenate(labels)


def evaluate(model, dataset, *, strategy=None, jit_compile=False, name="eval"):
  """Metrics of `model` (EMA weights, inference mode) on a batched (image, label) dataset."""
  return classification_metrics(*predict_logits(model, dataset, strategy=strategy,
                                                jit_compile=jit_compile, name=name))


def evaluate_data(model, data, prep, config=None, *, strategy=None):
  """Metrics of `model` on eval data `data` (directory or glob) as every eval reads it: `prep`'s
  eval preprocessing, batches of `config.batch_size`, XLA as `config` says, under `strategy`.
  eval_phase's and train's periodic evaluation's one path."""
  config = config or EvalConfig()
  return evaluate(model, pipeline.eval_dataset(data, prep, batch_size=config.batch_size),
                  strategy=strategy, jit_compile=distribute.jit_compile(config.jit_compile,
                                                                        strategy),
                  name=f"eval {data}")


def headline(metrics, data):
  """The line a finished eval logs: top-1 and top-5 in percent, the loss and the image count."""
  return (f"eval {data}: top-1 {100 * metrics['top1']:.2f}%, top-5 {100 * metrics['top5']:.2f}%, "
          f"loss {metrics['loss']:.4f} on {metrics['num_examples']} images")


def named_per_class(per_class, class_names):
  """`per_class` ({class index as a string: value}) keyed by class name instead, when
  `class_names` names every class once (two classes of one name would collide); else as is."""
  if (not class_names or len(set(class_names)) != len(class_names)
      or any(int(k) >= len(class_names) for k in per_class)):
    return per_class
  return {str(class_names[int(k)]): v for k, v in per_class.items()}


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


def eval_phase(model, prep, output_dir, *, eval_data, validation_data=None, config=None,
               strategy=None, class_names=None, extra=None,
               confidence_threshold=filter_balance.FilterRule.threshold):
  """The one eval path (main's eval mode, iterate, the end of train): metrics of `model` in
  inference mode on `eval_data`, and their single numbers on `validation_data` under
  "validation" (the split choices are made on), written to `output_dir`/metrics.json with the
  per-class, confusion-matrix and reliability plots of `eval_data`.

  Args:
    prep: eval `PreprocessConfig` (see checkpoints.eval_preprocessing).
    config: `EvalConfig` (its mixed_precision is the loader's: `model` is run as it is).
    strategy: the tf.distribute strategy `model` was loaded under (default: the current one).
    extra: optional callable(metrics) -> dict merged into the metrics before they are saved
      (eval mode's robustness results).
    confidence_threshold: the filter's, marked on the reliability diagram (for a teacher, how
      right its pseudo labels above the threshold are).

  Returns:
    The metrics as metrics.json holds them: per_class_accuracy keyed by class name when
    `class_names` names the classes (`named_per_class`), else by class index.
  """
  metrics = evaluate_data(model, eval_data, prep, config, strategy=strategy)
  logging.info("%s", headline(metrics, eval_data))
  if validation_data:
    metrics["validation"] = scalar_metrics(
        evaluate_data(model, validation_data, prep, config, strategy=strategy))
    logging.info("%s", headline(metrics["validation"], validation_data))
  if extra is not None:
    metrics.update(extra(metrics))
  save_metrics(metrics, output_dir, class_names=class_names,
               confidence_threshold=confidence_threshold)
  metrics["per_class_accuracy"] = named_per_class(metrics["per_class_accuracy"], class_names)
  return metrics


def metrics_json(metrics):
  """metrics.json's text: indented, but one line per confusion-matrix row (a 1000-class matrix
  would otherwise take a million lines)."""
  matrix = metrics.get("confusion_matrix")
  if matrix is None:
    return json.dumps(metrics, indent=1) + "\n"
  marker = "\0confusion_matrix\0"  # a string no metric holds, replaced by the rows
  text = json.dumps(dict(metrics, confusion_matrix=marker), indent=1)
  rows = "[\n  " + ",\n  ".join(json.dumps(row) for row in matrix) + "\n ]"
  return text.replace(json.dumps(marker), rows, 1) + "\n"


def save_metrics(metrics, output_dir, name="metrics.json", class_names=None,
                 confidence_threshold=filter_balance.FilterRule.threshold):
  """Writes metrics.json and its plots beside it: per-class accuracy, the confusion matrix and
  the reliability diagram, classes named by `class_names`, else by index (metrics.json's
  per_class_accuracy too: `metrics`' is keyed by class index)."""
  from noisy_student import plots  # pylint: disable=g-import-not-at-top  (matplotlib is slow)
  tf.io.gfile.makedirs(output_dir)
  path = os.path.join(output_dir, name)
  metrics = dict(metrics, per_class_accuracy=named_per_class(metrics["per_class_accuracy"],
                                                             class_names))
  records.write_text_atomically(path, metrics_json(metrics))
  plots.per_class_accuracy(metrics["per_class_accuracy"],
                           os.path.join(output_dir, "per_class_accuracy.png"),
                           title=f"per-class top-1 (overall {metrics['top1']:.4f})")
  if "confusion_matrix" in metrics:
    plots.confusion_matrix(metrics["confusion_matrix"],
                           os.path.join(output_dir, "confusion_matrix.png"),
                           class_names=class_names)
  if "calibration" in metrics:
    plots.reliability_diagram(metrics["calibration"], metrics["ece"],
                              os.path.join(output_dir, "reliability.png"),
                              threshold=confidence_threshold)
  return path
