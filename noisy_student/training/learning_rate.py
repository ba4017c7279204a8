"""The reference's learning-rate arithmetic in plain Python: the peak rate, the decay period that
reaches a final rate, and the rate at any step. No TensorFlow: `--dry_run` reports the rates a
run will use from this module, and `schedules.WarmupExponentialDecay` (the Keras schedule the
run trains with) is built from the same `Schedule`.

Reference: tensorflow/tpu and noisystudent `utils.build_learning_rate` with `main.py`'s arguments
(digest efficientnet-and-randaugment.md section 7, noisy-student-reference.md sections 1.3, 6.1).
"""

import dataclasses
import math


def scaled_learning_rate(base_learning_rate, labeled_batch_size):
  """`base_learning_rate * labeled_batch_size / 256` (0.016 per 256 labeled images).

  The reference scales by the labeled batch only; pseudo-labeled rows do not count.
  """
  return base_learning_rate * labeled_batch_size / 256.0


def check_final_learning_rate(base_learning_rate, final_base_learning_rate, decay_rate):
  """Raises ValueError, naming the flags, unless decay by `decay_rate` steps can reach the final
  rate from the peak (checked before a run: iterate builds its students' schedules hours in)."""
  if not 0 < final_base_learning_rate < base_learning_rate:
    raise ValueError(f"--final_learning_rate must be above 0 and below --base_learning_rate="
                     f"{base_learning_rate:g}, got {final_base_learning_rate:g}")
  if not 0 < decay_rate < 1:
    raise ValueError(f"--final_learning_rate needs --lr_decay_factor between 0 and 1, got "
                     f"{decay_rate:g}")


def decay_epochs_for_final_learning_rate(base_learning_rate, final_base_learning_rate,
                                         total_epochs, *, warmup_epochs=5.0, decay_rate=0.97):
  """Decay period that brings the rate to `final_base_learning_rate` (`--final_base_lr`).

  The reference solves `(total_epochs - 5) / (log(final / base) / log(0.97))`; `warmup_epochs`
  and `decay_rate` default to those constants. Both rates are per 256 images: their ratio is what
  counts. Because decay is counted from step 0 (see `Schedule`), the last rate is about
  `final * decay_rate ** (warmup_epochs / decay_epochs)`, a little below the target (SVHN:
  9.1e-5 instead of 1e-4 at batch 128).

  Args:
    base_learning_rate: the peak rate per 256 images (0.016).
    final_base_learning_rate: the wanted final rate per 256 images (SVHN recipe: 0.0002).
    total_epochs: `train_steps / steps_per_epoch`, after any `train_ratio` scaling.
    warmup_epochs: subtracted from `total_epochs`.
    decay_rate: the staircase factor.
  """
  check_final_learning_rate(base_learning_rate, final_base_learning_rate, decay_rate)
  if total_epochs <= warmup_epochs:
    raise ValueError(f"--final_learning_rate needs a run longer than its warm-up: the run is "
                     f"{total_epochs:g} epochs and --warmup_epochs={warmup_epochs:g}")
  decay_times = math.log(final_base_learning_rate / base_learning_rate) / math.log(decay_rate)
  return (total_epochs - warmup_epochs) / decay_times


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Linear warm-up, then staircase exponential decay counted from step 0 (the reference's).

  With `s = step + start_step`, `warmup_steps = int(warmup_epochs * steps_per_epoch)` and
  `decay_steps = steps_per_epoch * decay_epochs` (a float):

    rate(s) = peak * s / warmup_steps                         if s < warmup_steps
    rate(s) = peak * decay_rate ** floor(s / decay_steps)     otherwise

  so the rate drops at `warmup_steps` from about `peak` to `peak * decay_rate ** floor(
  warmup_steps / decay_steps)` (0.97**2 with the defaults). `decay_from_warmup_end=True` counts
  the decay from `warmup_steps` instead (not the reference). `start_step`: the reference's
  fine-tuning runs the last N steps of a schedule with `start_step = train_steps - N`
  (`--train_last_step_num`).
  """
  peak_learning_rate: float
  steps_per_epoch: float
  warmup_epochs: float = 5.0
  decay_epochs: float = 2.4
  decay_rate: float = 0.97
  start_step: int = 0
  decay_from_warmup_end: bool = False

  def __post_init__(self):
    if self.steps_per_epoch <= 0 or self.decay_epochs <= 0:
      raise ValueError("steps_per_epoch and decay_epochs must be positive, got "
                       f"{self.steps_per_epoch} and {self.decay_epochs}")

  @property
  def warmup_steps(self):
    return int(self.warmup_epochs * self.steps_per_epoch)

  def rate(self, step):
    """The rate of the update at optimizer step `step` (0-based, before `start_step`)."""
    step = step + self.start_step
    decay_step = step - self.warmup_steps if self.decay_from_warmup_end else step
    decayed = self.peak_learning_rate * self.decay_rate ** math.floor(
        decay_step / (self.steps_per_epoch * self.decay_epochs))
    if self.warmup_steps > 0 and step < self.warmup_steps:
      return self.peak_learning_rate * step / self.warmup_steps
    return decayed


def run_schedule(config, steps_per_epoch, total_steps):
  """The `Schedule` of a train run of `total_steps` steps (config: a TrainConfig): warm-up and
  decay over the run, or, with `config.schedule_steps` (FixRes fine-tuning), the last
  `total_steps` steps of a schedule that long (the rate continues where the run it fine-tunes
  ends)."""
  schedule_steps = config.schedule_steps or total_steps
  if schedule_steps < total_steps:
    raise ValueError(f"the run has {total_steps} steps, more than the {schedule_steps} of the "
                     "schedule whose tail it continues")
  decay_epochs = config.lr_decay_epochs
  if config.final_learning_rate is not None:
    decay_epochs = decay_epochs_for_final_learning_rate(
        config.base_learning_rate, config.final_learning_rate, schedule_steps / steps_per_epoch,
        warmup_epochs=config.warmup_epochs, decay_rate=config.lr_decay_factor)
  return Schedule(scaled_learning_rate(config.base_learning_rate, config.batch_size),
                  steps_per_epoch, warmup_epochs=config.warmup_epochs, decay_epochs=decay_epochs,
                  decay_rate=config.lr_decay_factor, start_step=schedule_steps - total_steps)
