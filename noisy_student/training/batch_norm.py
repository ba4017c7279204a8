"""Batch-norm moving statistics that fit the weights a run saves ("precise BN").

Batch norm trains on each batch's own statistics and keeps moving averages (momentum 0.99) for
inference. Those averages lag the weights: they mix statistics of weights from the last few
hundred steps, and in a short run whose weights still move fast the error compounds through the
depth. Seen here: a 188-step teacher at 81% with batch statistics and 10% (chance) in inference
mode, moving variances up to 4e4 in the last blocks. The EMA of the weights makes it no better:
its averaged statistics belong to no single set of weights either.

`recalibrate` replaces every trainable batch-norm layer's moving mean and variance by the average,
over batches of training images, of the statistics that layer sees with the final weights (Wu &
Johnson 2021, "Rethinking 'Batch' in BatchNorm", section 3). Dropout and stochastic depth are off
during the pass; frozen layers (FixRes fine-tuning) keep theirs. The pass also measures top-1
under batch statistics, which train's `settle_batch_norm` compares with inference mode to decide
whether the recalibrated statistics or the averaged ones are saved.
"""

import contextlib

import keras
import numpy as np

from noisy_student import inference


def _layers(model, kind):
  layers = model._flatten_layers(include_self=False)  # pylint: disable=protected-access
  return [layer for layer in layers if isinstance(layer, kind)]


@contextlib.contextmanager
def _batch_statistics_mode(model):
  """model(x, training=True) normalises with batch statistics and writes them to the moving
  variables (momentum 0) without any noise: dropout and stochastic depth rates are 0."""
  norms = [layer for layer in _layers(model, keras.layers.BatchNormalization) if layer.trainable]
  dropouts = _layers(model, keras.layers.Dropout)
  momenta, rates = [n.momentum for n in norms], [d.rate for d in dropouts]
  for layer in norms:
    layer.momentum = 0.0
  for layer in dropouts:
    layer.rate = 0.0
  try:
    yield norms
  finally:
    for layer, momentum in zip(norms, momenta):
      layer.momentum = momentum
    for layer, rate in zip(dropouts, rates):
      layer.rate = rate


def recalibrate(model, dataset, max_batches, *, strategy=None):
  """Sets the moving statistics of `model`'s trainable batch-norm layers to their mean over the
  first `max_batches` batches of `dataset` ((images, labels) batches), each batch weighted by its
  size (a short last batch counts for its images only), computed with the current weights, each
  batch split over `strategy`'s replicas (`inference.InferenceStep` in training mode: no batch
  larger than the dataset's is built). Returns {"batches", "images", "batch_statistics_top1"}:
  the last is top-1 of those batches under batch statistics (what training saw, without noise).

  The variance is the mean of the per-batch variances (as Wu & Johnson do): with batches of 32 or
  more it is within a few percent of the population's.
  """
  with _batch_statistics_mode(model) as norms:
    if not norms:
      return {"batches": 0, "images": 0, "batch_statistics_top1": None}
    variables = [v for n in norms for v in (n.moving_mean, n.moving_variance)]
    step = None
    sums = [np.zeros(v.shape, np.float64) for v in variables]
    batches = images_seen = hits = 0
    for images, labels in dataset.take(max_batches):
      if step is None:  # the first batch of a batched dataset is its largest
        step = inference.InferenceStep(model, images.shape[0], strategy=strategy, training=True)
      if images.shape[0] % step.replicas:
        continue  # a short last batch that the replicas cannot share evenly
      logits = step(images)
      for total, variable in zip(sums, variables):
        total += len(logits) * keras.ops.convert_to_numpy(variable).astype(np.float64)
      batches += 1
      images_seen += len(logits)
      hits += int((_top1(logits) == _class_index(labels.numpy())).sum())
    if not batches:
      raise ValueError("no images to recalibrate batch norm with")
    for total, variable in zip(sums, variables):
      variable.assign((total / images_seen).astype(variable.dtype))
  return {"batches": batches, "images": images_seen,
          "batch_statistics_top1": hits / images_seen}


def _top1(logits):
  """argmax, with a row holding any non-finite logit never matching a class."""
  return np.where(np.isfinite(logits).all(axis=1), logits.argmax(axis=1), -1)


def _class_index(labels):
  """Integer labels from integer or one-hot / soft label rows."""
  return labels.argmax(axis=1) if labels.ndim == 2 else labels
