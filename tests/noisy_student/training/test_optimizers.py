"""noisy_student/training/optimizers.py: TF1's RMSProp against a NumPy restatement."""

import keras
import numpy as np

from noisy_student.training import optimizers
from noisy_student.training import schedules
from tests.noisy_student.training.test_schedules import _reference_lr


# --- optimizer ---------------------------------------------------------------------------------

def _np_rmsprop(values, grads_per_step, lrs, rho=0.9, momentum=0.9, eps=1e-3, ms_init=1.0):
  """tf.train.RMSPropOptimizer: ms = rho*ms + (1-rho)*g^2; mom = m*mom + lr*g/sqrt(ms+eps)."""
  values = [v.astype(np.float64) for v in values]
  ms = [np.full_like(v, ms_init) for v in values]
  mom = [np.zeros_like(v) for v in values]
  for grads, lr in zip(grads_per_step, lrs):
    for i, g in enumerate(grads):
      ms[i] = rho * ms[i] + (1 - rho) * g**2
      mom[i] = momentum * mom[i] + lr * g / np.sqrt(ms[i] + eps)
      values[i] = values[i] - mom[i]
  return values


def _apply_steps(optimizer, values, grads_per_step):
  variables = [keras.Variable(v) for v in values]
  for grads in grads_per_step:
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
  return [v.numpy() for v in variables]


def test_tf1_rmsprop_matches_numpy_and_differs_from_keras():
  rng = np.random.default_rng(3)
  values = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
  grads = [[rng.normal(size=v.shape).astype(np.float32) for v in values] for _ in range(6)]
  schedule = schedules.WarmupExponentialDecay(0.05, 1.0, warmup_epochs=2, decay_epochs=1.5)
  lrs = [_reference_lr(step, 0.05, 1.0, warmup_epochs=2, decay_epochs=1.5) for step in range(6)]

  ours = _apply_steps(optimizers.TF1RMSProp(schedule), values, grads)
  for got, want in zip(ours, _np_rmsprop(values, grads, lrs)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  # Keras' RMSprop is the same update with ms starting at zeros, hence larger first steps.
  constant = [0.01] * 2
  ours = _apply_steps(optimizers.TF1RMSProp(0.01), values, grads[:2])
  keras_rms = _apply_steps(keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3),
                           values, grads[:2])
  np.testing.assert_allclose(keras_rms[0], _np_rmsprop(values, grads[:2], constant, ms_init=0)[0],
                             rtol=1e-5, atol=1e-6)
  step_ours = np.abs(ours[0] - values[0]).mean()
  step_keras = np.abs(keras_rms[0] - values[0]).mean()
  assert step_keras > 2 * step_ours


def test_tf1_rmsprop_serialises():
  schedule = schedules.WarmupExponentialDecay(0.1, 10.0)
  optimizer = optimizers.TF1RMSProp(schedule, rho=0.8, moving_average_decay=0.999)
  restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
  assert isinstance(restored, optimizers.TF1RMSProp)
  assert restored.get_config() == optimizer.get_config()
  assert restored.get_config()["moving_average_decay"] == 0.999
