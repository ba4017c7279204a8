"""noisy_student/training/schedules.py: the reference's learning-rate schedule against a
restatement of utils.build_learning_rate (noisy-student-reference.md section 4)."""

import math

import keras
import numpy as np

from noisy_student.training import schedules


# --- learning-rate schedule --------------------------------------------------------------------

def _reference_lr(step, peak, steps_per_epoch, warmup_epochs=5, decay_epochs=2.4, rate=0.97):
  """utils.build_learning_rate: tf.train.exponential_decay(staircase) under a linear warm-up."""
  warmup_steps = int(warmup_epochs * steps_per_epoch)
  if step < warmup_steps:
    return peak * step / warmup_steps
  return peak * rate ** math.floor(step / (steps_per_epoch * decay_epochs))


def test_schedule_values_and_warmup_jump():
  peak, steps_per_epoch = 0.1, 10.5  # warm-up ends at int(52.5) = 52; decay every 25.2 steps
  schedule = schedules.WarmupExponentialDecay(peak, steps_per_epoch)
  for step in [0, 1, 26, 51, 52, 53, 75, 100, 1000, 12345]:
    # float32 (as TF1 computes it): 0.97**39 is off by ~1e-6 relative.
    np.testing.assert_allclose(float(schedule(step)), _reference_lr(step, peak, steps_per_epoch),
                               rtol=1e-5, atol=1e-12, err_msg=f"step {step}")
  # The reference's jump: decay has counted floor(52 / 25.2) = 2 periods when warm-up ends.
  np.testing.assert_allclose(float(schedule(51)), peak * 51 / 52, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(52)), peak * 0.97**2, rtol=1e-6)


def test_schedule_options():
  schedule = schedules.WarmupExponentialDecay(0.1, 10.5, decay_from_warmup_end=True)
  np.testing.assert_allclose(float(schedule(52)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(52 + 26)), 0.1 * 0.97, rtol=1e-6)
  shifted = schedules.WarmupExponentialDecay(0.1, 10.5, start_step=1000)
  np.testing.assert_allclose(float(shifted(5)), _reference_lr(1005, 0.1, 10.5), rtol=1e-5)
  no_warmup = schedules.WarmupExponentialDecay(0.1, 10.5, warmup_epochs=0)
  np.testing.assert_allclose(float(no_warmup(0)), 0.1, rtol=1e-6)


def test_schedule_serialises():
  schedule = schedules.WarmupExponentialDecay(0.2, 3.5, decay_epochs=1.5, start_step=7)
  restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
  assert isinstance(restored, schedules.WarmupExponentialDecay)
  assert restored.get_config() == schedule.get_config()
