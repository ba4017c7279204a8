"""noisy_student/training/batch_norm.py: recalibrated moving statistics against a NumPy forward
pass of the same weights over the same batches."""

import keras
import numpy as np
import tensorflow as tf

from noisy_student.training import batch_norm

EPSILON = 1e-3  # Keras' BatchNormalization default


def _model():
  keras.utils.set_random_seed(2)
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                            keras.layers.BatchNormalization(), keras.layers.Dropout(0.5),
                            keras.layers.Dense(2), keras.layers.BatchNormalization(name="frozen")])
  model.get_layer("frozen").trainable = False
  return model


def _numpy_pass(model, x):
  """Per batch: the first batch norm's input (to restate its statistics) and the logits with
  batch statistics, no dropout, the frozen layer on its moving statistics."""
  dense, norm, _, head, frozen = model.layers
  hidden = x @ dense.kernel.numpy() + dense.bias.numpy()
  mean, var = hidden.mean(axis=0), hidden.var(axis=0)  # biased, as batch norm normalises with
  normed = norm.gamma.numpy() * (hidden - mean) / np.sqrt(var + EPSILON) + norm.beta.numpy()
  logits = normed @ head.kernel.numpy() + head.bias.numpy()
  logits = (frozen.gamma.numpy() * (logits - frozen.moving_mean.numpy())
            / np.sqrt(frozen.moving_variance.numpy() + EPSILON) + frozen.beta.numpy())
  return mean, var, logits


def test_recalibrated_statistics_are_the_size_weighted_mean_of_each_batchs():
  model = _model()
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (21, 4)).astype(np.float32)
  y = rng.integers(0, 2, 21)
  frozen = [v.numpy() for v in (model.layers[-1].moving_mean, model.layers[-1].moving_variance)]
  batches = [x[:8], x[8:16], x[16:]]  # 8, 8 and a short last batch of 5
  result = batch_norm.recalibrate(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), 3)

  passes = [_numpy_pass(model, b.astype(np.float64)) for b in batches]
  sizes = np.array([len(b) for b in batches])[:, None]
  norm = model.layers[1]
  np.testing.assert_allclose(norm.moving_mean.numpy(),
                             (sizes * [p[0] for p in passes]).sum(0) / 21, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(norm.moving_variance.numpy(),
                             (sizes * [p[1] for p in passes]).sum(0) / 21, rtol=1e-4, atol=1e-5)
  # The frozen layer keeps its statistics; the momentum and the dropout rate are restored.
  for before, variable in zip(frozen, (model.layers[-1].moving_mean,
                                       model.layers[-1].moving_variance)):
    np.testing.assert_array_equal(variable.numpy(), before)
  assert norm.momentum == 0.99 and model.layers[2].rate == 0.5
  hits = sum(int((p[2].argmax(1) == y[i * 8:i * 8 + len(b)]).sum())
             for i, (p, b) in enumerate(zip(passes, batches)))
  assert result == {"batches": 3, "images": 21, "batch_statistics_top1": hits / 21}


def test_only_max_batches_are_read():
  model = _model()
  x = np.random.default_rng(1).normal(size=(24, 4)).astype(np.float32)
  result = batch_norm.recalibrate(
      model, tf.data.Dataset.from_tensor_slices((x, np.zeros(24, np.int64))).batch(8), 2)
  assert (result["batches"], result["images"]) == (2, 16)
  mean = np.mean([_numpy_pass(model, x[i:i + 8].astype(np.float64))[0] for i in (0, 8)], axis=0)
  np.testing.assert_allclose(model.layers[1].moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
