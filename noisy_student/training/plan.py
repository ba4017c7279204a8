"""What a train run will do, before it does it: its rows, the batch each replica holds, its steps
and how Keras epochs tile them, warm-up and the learning rate at its landmarks, the image size it
sees. Plain arithmetic, no TensorFlow: `--dry_run` prints this plan, and `train.train` runs exactly
it (its step count, Keras epochs and schedule come from here).
"""

import dataclasses
import math

from data import batch_layout
from noisy_student.training import learning_rate

# Backups, TensorBoard points and progress lines come at least this often.
MAX_STEPS_PER_KERAS_EPOCH = 1000
ROLES = ("teacher", "student", "finetune")


@dataclasses.dataclass(frozen=True)
class KerasEpochs:
  """How Keras epochs tile a run: `count` epochs of `steps`, the last one `last` steps."""
  steps: int
  count: int
  last: int


def keras_epochs(total_steps, steps_per_epoch):
  """A Keras epoch is one data epoch rounded to whole steps (at most MAX_STEPS_PER_KERAS_EPOCH),
  so Keras' epoch counter reads as data epochs; the run is exactly `total_steps`, its last Keras
  epoch shorter when whole ones do not tile it (the L2 fine-tune's 469 steps at 312.8 steps an
  epoch: 313 + 156)."""
  if total_steps < 1:
    raise ValueError(f"a run needs at least one step, got {total_steps}")
  size = max(1, min(int(round(steps_per_epoch)), MAX_STEPS_PER_KERAS_EPOCH, total_steps))
  count = -(-total_steps // size)
  return KerasEpochs(size, count, total_steps - (count - 1) * size)


def total_steps(config, steps_per_epoch):
  """`--train_steps` as given, or `--epochs` of the labeled data rounded up to a whole step."""
  if config.train_steps is not None:
    return int(config.train_steps)
  return max(1, math.ceil(config.epochs * steps_per_epoch))


def per_replica(rows, replicas, what):
  if rows % replicas:
    raise ValueError(f"{what}: {rows} rows a step do not split evenly over {replicas} replicas "
                     "(make --batch_size a multiple of the replicas)")
  return rows // replicas


@dataclasses.dataclass(frozen=True)
class TrainPlan:
  """One train run's numbers (`plan_training`); `as_dict()` is what --dry_run writes."""
  role: str
  model: str
  image_size: int
  labeled_rows: int
  pseudo_rows: int | None
  replicas: int
  labeled_per_step: int
  pseudo_per_step: int
  steps_per_epoch: float
  total_steps: int
  keras_epochs: KerasEpochs
  schedule: learning_rate.Schedule

  @property
  def images_per_step(self):
    return self.labeled_per_step + self.pseudo_per_step

  @property
  def epochs(self):
    """Data epochs of the labeled set the run trains."""
    return self.total_steps / self.steps_per_epoch

  def learning_rates(self):
    """The rate of the first update, the last warm-up update and the first after it (when the
    warm-up ends within the run), and the last update."""
    warmup = self.schedule.warmup_steps - self.schedule.start_step
    rates = {"step_0": self.schedule.rate(0)}
    if 0 < warmup <= self.total_steps:  # a warm-up longer than the run never ends
      rates["warmup_end"] = self.schedule.rate(warmup - 1)
      if warmup < self.total_steps:
        rates["after_warmup"] = self.schedule.rate(warmup)
    rates["last_step"] = self.schedule.rate(self.total_steps - 1)
    return rates

  def as_dict(self):
    found = dataclasses.asdict(self)
    found.update(images_per_step=self.images_per_step, epochs=self.epochs,
                 per_replica={"labeled": self.labeled_per_step // self.replicas,
                              "pseudo": self.pseudo_per_step // self.replicas,
                              "images": self.images_per_step // self.replicas},
                 warmup_steps=self.schedule.warmup_steps, learning_rate=self.learning_rates(),
                 images_seen=self.total_steps * self.images_per_step)
    if self.pseudo_rows:
      found["pseudo_epochs"] = self.total_steps * self.pseudo_per_step / self.pseudo_rows
    return found

  def lines(self):
    """The plan for people, a few lines."""
    k = self.keras_epochs
    tiling = (f"{k.count} Keras epochs of {k.steps}" if k.last == k.steps else
              f"{k.count} Keras epochs: {k.count - 1} of {k.steps} and a last one of {k.last}")
    rates = ", ".join(f"{name} {value:.6g}" for name, value in self.learning_rates().items())
    pseudo = (f" + {self.pseudo_per_step} pseudo-labeled ({self.pseudo_rows:,} rows)"
              if self.pseudo_per_step else "")
    return [
        f"{self.role} {self.model} at {self.image_size}px: {self.labeled_rows:,} labeled rows",
        f"  batch: {self.labeled_per_step} labeled{pseudo} images a step, "
        f"{self.images_per_step // self.replicas} per replica on {self.replicas}",
        f"  {self.total_steps:,} steps = {self.epochs:.4g} epochs of {self.steps_per_epoch:.4g} "
        f"steps ({tiling})",
        f"  warm-up {self.schedule.warmup_steps:,} steps"
        + (f" (schedule continues at step {self.schedule.start_step:,})"
           if self.schedule.start_step else "") + f"; learning rate: {rates}",
    ]


def plan_training(config, *, role, labeled_rows, image_size, replicas=1, pseudo_rows=None):
  """The plan of a run of `config` (a TrainConfig) over `labeled_rows` labeled rows at
  `image_size`, on `replicas` replicas; a student (role "student") also reads `pseudo_rows`
  pseudo-labeled rows (None: not known yet, before its filter has run)."""
  if role not in ROLES:
    raise ValueError(f"role must be one of {ROLES}, got {role!r}")
  if labeled_rows < 1:
    raise ValueError("the labeled data holds no records")
  steps_per_epoch = labeled_rows / config.batch_size
  steps = total_steps(config, steps_per_epoch)
  pseudo = (batch_layout.unlabeled_rows(config.batch_size, config.unlabeled_batch_ratio)
            if role == "student" else 0)
  per_replica(config.batch_size, replicas, "--batch_size")
  per_replica(pseudo, replicas, "--batch_size * --unlabeled_batch_ratio")
  return TrainPlan(
      role=role, model=config.model, image_size=image_size, labeled_rows=labeled_rows,
      pseudo_rows=pseudo_rows if role == "student" else None, replicas=replicas,
      labeled_per_step=config.batch_size, pseudo_per_step=pseudo,
      steps_per_epoch=steps_per_epoch, total_steps=steps,
      keras_epochs=keras_epochs(steps, steps_per_epoch),
      schedule=learning_rate.run_schedule(config, steps_per_epoch, steps))


def prediction_storage(records, bytes_per_record):
  """What predict writes for `records` images at `bytes_per_record` each (serialised Example)."""
  return {"records": records, "bytes_per_record": bytes_per_record,
          "bytes": records * bytes_per_record}
