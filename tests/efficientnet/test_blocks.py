"""blocks.BatchNormalization (TensorFlow's fused kernel in training) against the batch-norm formula
in NumPy and against keras.layers.BatchNormalization with the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet
from efficientnet import blocks

EPSILON = 1e-3
MOMENTUM = 0.99
# float32 kernels against float64 NumPy on values of order 1-10.
ATOL = 2e-5


def _layers(channels, rng):
  """Ours and Keras' layer with the same random gamma, beta and moving statistics."""
  weights = [rng.normal(1, 0.5, channels), rng.normal(0, 0.5, channels),
             rng.normal(0, 1, channels), rng.uniform(0.5, 2, channels)]
  weights = [w.astype("float32") for w in weights]
  pair = []
  for kind in (blocks.BatchNormalization, keras.layers.BatchNormalization):
    layer = kind(momentum=MOMENTUM, epsilon=EPSILON)
    layer.build((None, None, None, channels))
    layer.set_weights(weights)
    pair.append(layer)
  return pair, [w.astype("float64") for w in weights]


def _numpy_training(x, gamma, beta, moving_mean, moving_variance, upstream, momentum=MOMENTUM):
  """Batch norm over axes 0-2 with the biased variance, its moving statistics, and the
  gradients of sum(y * upstream) (the textbook closed form)."""
  n = x.shape[0] * x.shape[1] * x.shape[2]
  mean = x.mean(axis=(0, 1, 2))
  variance = ((x - mean) ** 2).mean(axis=(0, 1, 2))
  inverse = 1.0 / np.sqrt(variance + EPSILON)
  normalised = (x - mean) * inverse
  y = normalised * gamma + beta
  d_gamma = (upstream * normalised).sum(axis=(0, 1, 2))
  d_beta = upstream.sum(axis=(0, 1, 2))
  d_x = gamma * inverse / n * (n * upstream - d_beta - normalised * d_gamma)
  return dict(y=y, d_x=d_x, d_gamma=d_gamma, d_beta=d_beta,
              moving_mean=moving_mean * momentum + mean * (1 - momentum),
              moving_variance=moving_variance * momentum + variance * (1 - momentum))


def _train_step(layer, x, upstream):
  @tf.function  # graph mode, as in model.fit
  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
      objective = tf.reduce_sum(y * upstream)
    d_x, d_gamma, d_beta = tape.gradient(objective, [x, layer.gamma.value, layer.beta.value])
    return dict(y=y, d_x=d_x, d_gamma=d_gamma, d_beta=d_beta)

  found = {k: v.numpy() for k, v in step(tf.constant(x)).items()}
  found.update(moving_mean=layer.moving_mean.numpy(), moving_variance=layer.moving_variance.numpy())
  return found


@pytest.mark.parametrize("shape", [(6, 5, 4, 8), (3, 7, 7, 16), (1, 1, 1, 4), (2, 1, 1, 3)])
def test_training_step_matches_the_formula_and_keras(shape):
  """Output, gradients and moving statistics; (1, 1, 1, C) has one value a channel (variance 0,
  where the kernel's n / (n - 1) correction must not divide by zero)."""
  rng = np.random.default_rng(sum(shape))
  (ours, reference), weights = _layers(shape[-1], rng)
  x = rng.normal(3, 2, shape).astype("float32")
  upstream = rng.normal(0, 1, shape).astype("float32")
  expected = _numpy_training(x.astype("float64"), *weights, upstream.astype("float64"))
  found = _train_step(ours, x, upstream)
  keras_found = _train_step(reference, x, upstream)
  for key, value in expected.items():
    np.testing.assert_allclose(found[key], value, atol=ATOL, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(found[key], keras_found[key], atol=ATOL, rtol=1e-5, err_msg=key)


def test_momentum_is_read_at_call_time():
  """batch_norm.recalibrate sets momentum to 0 to store each batch's own statistics."""
  rng = np.random.default_rng(1)
  (ours, _), weights = _layers(5, rng)
  ours.momentum = 0.0
  x = rng.normal(-1, 3, (4, 3, 3, 5)).astype("float32")
  expected = _numpy_training(x.astype("float64"), *weights, np.zeros(x.shape), momentum=0.0)
  ours(tf.constant(x), training=True)
  np.testing.assert_allclose(ours.moving_mean.numpy(), expected["moving_mean"], atol=ATOL)
  np.testing.assert_allclose(ours.moving_variance.numpy(), expected["moving_variance"],
                             atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("trainable", [True, False])
def test_inference_and_frozen_layers_use_the_moving_statistics_as_keras_does(trainable):
  """training=False, and a frozen layer (FixRes fine-tuning) in training: Keras' own path, bit
  for bit, the moving statistics untouched."""
  rng = np.random.default_rng(2)
  (ours, reference), weights = _layers(6, rng)
  ours.trainable = reference.trainable = trainable
  x = tf.constant(rng.normal(0, 2, (3, 4, 4, 6)).astype("float32"))
  for training in ((False, True) if not trainable else (False,)):
    np.testing.assert_array_equal(ours(x, training=training).numpy(),
                                  reference(x, training=training).numpy())
  gamma, beta, mean, variance = weights
  expected = (x.numpy() - mean) / np.sqrt(variance + EPSILON) * gamma + beta
  np.testing.assert_allclose(ours(x, training=False).numpy(), expected, atol=ATOL)
  np.testing.assert_array_equal(ours.moving_mean.numpy(), mean.astype("float32"))
  np.testing.assert_array_equal(ours.moving_variance.numpy(), variance.astype("float32"))


def test_bfloat16_policy_normalises_in_float32_and_returns_the_compute_dtype():
  rng = np.random.default_rng(3)
  x = rng.normal(2, 1, (4, 4, 4, 8)).astype("float32")
  outputs = {}
  for kind in (blocks.BatchNormalization, keras.layers.BatchNormalization):
    layer = kind(momentum=MOMENTUM, epsilon=EPSILON, dtype="mixed_bfloat16")
    outputs[kind] = layer(tf.constant(x, tf.bfloat16), training=True)
    assert outputs[kind].dtype == tf.bfloat16
    assert layer.moving_mean.dtype == "float32"
  ours, reference = (o.numpy().astype("float32") for o in outputs.values())
  np.testing.assert_allclose(ours, reference, atol=0.02, rtol=0.01)  # bfloat16's 8-bit mantissa


def test_model_uses_it_with_keras_variable_names():
  model = efficientnet.build_model("efficientnet-b0", 3, width_coefficient=0.25,
                                   depth_coefficient=0.3)
  norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert norms and all(type(l) is blocks.BatchNormalization for l in norms)
  keras_layer = keras.layers.BatchNormalization(name=norms[0].name)
  keras_layer.build(norms[0].input.shape)
  assert [w.path.split("/")[-1] for w in norms[0].weights] == [
      w.path.split("/")[-1] for w in keras_layer.weights]
