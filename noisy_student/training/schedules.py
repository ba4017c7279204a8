"""The reference's learning-rate schedule: linear warm-up, then staircase exponential decay.

Reference: tensorflow/tpu and noisystudent `utils.build_learning_rate` with `main.py`'s arguments
(digest efficientnet-and-randaugment.md section 7, noisy-student-reference.md sections 1.3, 6.1).
"""

import dataclasses

import keras
from keras import ops

# The arithmetic is learning_rate's (no TensorFlow); its names stay importable from here.
from noisy_student.training.learning_rate import (  # noqa: F401
    Schedule, check_final_learning_rate, decay_epochs_for_final_learning_rate, run_schedule,
    scaled_learning_rate)


@keras.saving.register_keras_serializable(package="noisy_student")
class WarmupExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
  """`peak * step / warmup_steps` while `step < warmup_steps`, else `peak * rate ** floor(...)`.

  With `s = step + start_step`, `warmup_steps = int(warmup_epochs * steps_per_epoch)` and
  `decay_steps = steps_per_epoch * decay_epochs` (a float):

    lr(s) = peak * s / warmup_steps                         if s < warmup_steps
    lr(s) = peak * decay_rate ** floor(s / decay_steps)     otherwise

  As in the reference the decay counts from step 0, not from the end of warm-up, so the rate
  drops at `warmup_steps` from about `peak` to `peak * decay_rate ** floor(warmup_steps /
  decay_steps)` (0.97**2 with the defaults). `decay_from_warmup_end=True` counts from
  `warmup_steps` instead, which removes the drop (not the reference).

  Args:
    peak_learning_rate: `scaled_learning_rate(base, labeled_batch_size)`.
    steps_per_epoch: labeled images per epoch / labeled batch size (a float, as in the reference).
    warmup_epochs: 5 in the reference; 0 disables warm-up.
    decay_epochs: 2.4 (times `train_ratio`), or `decay_epochs_for_final_learning_rate(...)`.
    decay_rate: 0.97.
    start_step: added to the optimizer step; the reference's fine-tuning runs the last N steps
      of a schedule with `start_step = train_steps - N` (`--train_last_step_num`).
    decay_from_warmup_end: see above.
  """

  def __init__(self, peak_learning_rate, steps_per_epoch, *, warmup_epochs=5.0, decay_epochs=2.4,
               decay_rate=0.97, start_step=0, decay_from_warmup_end=False):
    if steps_per_epoch <= 0 or decay_epochs <= 0:
      raise ValueError("steps_per_epoch and decay_epochs must be positive, got "
                       f"{steps_per_epoch} and {decay_epochs}")
    self.peak_learning_rate = float(peak_learning_rate)
    self.steps_per_epoch = float(steps_per_epoch)
    self.warmup_epochs = float(warmup_epochs)
    self.decay_epochs = float(decay_epochs)
    self.decay_rate = float(decay_rate)
    self.start_step = int(start_step)
    self.decay_from_warmup_end = bool(decay_from_warmup_end)

  @classmethod
  def from_schedule(cls, schedule):
    """The Keras schedule of a `learning_rate.Schedule` (the same rates, in float32)."""
    return cls(**{field.name: getattr(schedule, field.name)
                  for field in dataclasses.fields(schedule)})

  @property
  def warmup_steps(self):
    return int(self.warmup_epochs * self.steps_per_epoch)

  def __call__(self, step):
    # float32 throughout, like tf.train.exponential_decay on a float32 learning rate.
    step = ops.cast(step, "float32") + float(self.start_step)
    warmup_steps = float(self.warmup_steps)
    decay_step = step - warmup_steps if self.decay_from_warmup_end else step
    exponent = ops.floor(decay_step / (self.steps_per_epoch * self.decay_epochs))
    decayed = self.peak_learning_rate * ops.power(self.decay_rate, exponent)
    if warmup_steps <= 0:
      return decayed
    warmup = self.peak_learning_rate * step / warmup_steps
    return ops.where(step < warmup_steps, warmup, decayed)

  def get_config(self):
    return {"peak_learning_rate": self.peak_learning_rate,
            "steps_per_epoch": self.steps_per_epoch, "warmup_epochs": self.warmup_epochs,
            "decay_epochs": self.decay_epochs, "decay_rate": self.decay_rate,
            "start_step": self.start_step, "decay_from_warmup_end": self.decay_from_warmup_end}
