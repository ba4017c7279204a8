"""The train phase: one `model.fit` loop for the teacher, the student and FixRes fine-tuning.

Teacher: labeled data only. Student: labeled + pseudo-labeled rows in every batch
(`unlabeled_batch_ratio` of them per labeled row). Fine-tune (`finetune_config`): a larger image
size, eval preprocessing, the first blocks frozen, the tail of the run's schedule. Noise
(RandAugment, dropout, stochastic depth) applies whenever a model trains; the config sets its
strength.

`train` is a plan (training/plan.py: plain arithmetic, what `--dry_run` prints) executed by named
steps: `load_run_data`, `plan_run`, `check_workdir`, `build`, `resume`, `fit`, `settle_batch_norm`
and `save`. A run writes into its workdir: `backup/` (`Backup`: a killed run resumes from its last
Keras epoch when the same command runs again), `tensorboard/` (with `periodic_eval/` when it
evaluates while training, see training/periodic_eval.py), `history.json`, `train_config.json`
and, last, `model.keras` (the EMA weights) whose presence marks the run done: the same command
again reports it and does nothing, other settings are refused (`check_workdir`). In a multi-worker
run only the chief writes there.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time

import keras
import tensorflow as tf

import efficientnet
from data import batch_layout
from data import manifest as manifest_lib
from data import pipeline
from data import preprocess
from data import records
from noisy_student import checkpoints
from noisy_student import distribute
from noisy_student import inference
from noisy_student import plots
from noisy_student.phases import evaluate
from noisy_student.training import batch_norm
from noisy_student.training import ema
from noisy_student.training import losses
from noisy_student.training import metrics
from noisy_student.training import optimizers
from noisy_student.training import periodic_eval
from noisy_student.training import plan as plan_lib
from noisy_student.training import schedules

MAX_STEPS_PER_KERAS_EPOCH = plan_lib.MAX_STEPS_PER_KERAS_EPOCH
NORMALIZATIONS = ("manifest", "imagenet", "svhn")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a train run is asked to do; saved as train_config.json beside the model."""
  model: str = "efficientnet-b0"
  image_size: int | None = None
  small_image: bool = False
  pad_crop: bool | None = None
  width_coefficient: float | None = None
  depth_coefficient: float | None = None
  dropout_rate: float | None = None
  survival_prob: float | None = None
  num_classes: int | None = None
  batch_size: int = 128
  unlabeled_batch_ratio: float = 1.0
  pseudo_labels: str = "soft"
  temperature: float = 1.0
  epochs: float | None = None
  train_steps: int | None = None
  base_learning_rate: float = 0.016
  final_learning_rate: float | None = None
  warmup_epochs: float = 5.0
  lr_decay_epochs: float = 2.4
  lr_decay_factor: float = 0.97
  weight_decay: float = 1e-5
  label_smoothing: float = 0.1
  ema_decay: float | None = 0.9999
  randaugment_layers: int = 0
  randaugment_magnitude: float = 0.0
  cutout: bool = False
  flip: bool = True
  normalization: str = "manifest"
  freeze_blocks: int = 0
  augment: bool = True
  schedule_steps: int | None = None
  mixed_precision: str = "none"
  jit_compile: bool | None = None
  batch_norm_recalibration: str = "auto"
  batch_norm_recalibration_images: int = 4096
  eval_every_keras_epochs: int = 0
  seed: int = 0

  def __post_init__(self):
    if (self.epochs is None) == (self.train_steps is None):
      raise ValueError("give exactly one of --epochs and --train_steps")
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"--normalization must be one of {NORMALIZATIONS}")
    if self.mixed_precision not in distribute.PRECISION_POLICIES:
      raise ValueError(f"--mixed_precision must be one of {tuple(distribute.PRECISION_POLICIES)}"
                       f", got {self.mixed_precision!r}")
    if self.batch_size < 1:
      raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
    # Checked for every run, teachers too: iterate's students copy the teacher's config, and a
    # bad ratio would otherwise stop the first student after the teacher's hours of training.
    # 0 means labeled data only (the reference's unlabel_ratio=0); a student then refuses it.
    if self.unlabeled_batch_ratio:
      batch_layout.unlabeled_rows(self.batch_size, self.unlabeled_batch_ratio)
    if self.schedule_steps is not None and self.schedule_steps < 1:
      raise ValueError(f"schedule_steps must be >= 1, got {self.schedule_steps}")
    if self.batch_norm_recalibration not in BATCH_NORM_RECALIBRATIONS:
      raise ValueError(f"--batch_norm_recalibration must be one of {BATCH_NORM_RECALIBRATIONS}, "
                       f"got {self.batch_norm_recalibration!r}")
    if self.batch_norm_recalibration_images < 1:
      raise ValueError("--batch_norm_recalibration_images must be >= 1 (the inference check reads "
                       "them too; --batch_norm_recalibration=never keeps the averaged "
                       f"statistics), got {self.batch_norm_recalibration_images}")
    if self.eval_every_keras_epochs < 0:
      raise ValueError("--eval_every_keras_epochs must be >= 0 (0: off), got "
                       f"{self.eval_every_keras_epochs}")
    efficientnet.get_variant(self.model)


def uses_pad_crop(config):
  """Small-image preprocessing (pad-and-crop; eval without a center crop): --pad_crop, by
  default what --small_image says."""
  return config.small_image if config.pad_crop is None else config.pad_crop


def run_image_size(config):
  """The size a run trains and evaluates at: --image_size, else 32 with --small_image, else the
  variant's resolution."""
  return config.image_size or (
      32 if config.small_image else efficientnet.get_variant(config.model).resolution)


def preprocess_config(config, labeled_data, *, image_size=None, train=True):
  """The PreprocessConfig of a run; mean/std from the labeled data's manifest or a named set."""
  if config.normalization == "manifest":
    mean, std = manifest_lib.load_normalization(labeled_data)
  else:
    mean, std = preprocess.NORMALIZATIONS[config.normalization]
  return preprocess.PreprocessConfig(
      image_size=image_size or run_image_size(config), small_image=uses_pad_crop(config),
      randaugment_layers=config.randaugment_layers if train else 0,
      randaugment_magnitude=config.randaugment_magnitude, cutout=config.cutout and train,
      flip=config.flip, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
      augment=config.augment)


def build_student(config, num_classes, num_replicas=1):
  """The model a run trains; with several replicas its batch norm normalises over the global
  batch, so that R replicas of B/R rows train as one device of B rows."""
  return efficientnet.build_model(
      config.model, num_classes, image_size=config.image_size, small_image=config.small_image,
      dropout_rate=config.dropout_rate, survival_prob=config.survival_prob,
      width_coefficient=config.width_coefficient, depth_coefficient=config.depth_coefficient,
      synchronized_batch_norm=num_replicas > 1)


def freeze_first_blocks(model, num_blocks):
  """FixRes fine-tuning: the stem and the first `num_blocks` blocks stop training and run in
  inference mode, as the reference's `fix_layer_num` does: Keras runs a frozen batch norm with its
  moving statistics, but a Dropout layer ignores `trainable`, so the frozen blocks' stochastic
  depth is turned off here."""
  frozen_prefixes = ("stem_",) + tuple(b.name for b in model.block_plan[:num_blocks])
  if num_blocks > len(model.block_plan):
    raise ValueError(f"--freeze_blocks={num_blocks} but {model.name} has "
                     f"{len(model.block_plan)} blocks")
  for layer in model.layers:
    if layer.name.startswith(frozen_prefixes):
      layer.trainable = False
      if isinstance(layer, keras.layers.Dropout):
        layer.rate = 0.0


# The schedule settings a fine-tune takes from the run it continues.
SCHEDULE_FIELDS = ("base_learning_rate", "final_learning_rate", "warmup_epochs", "lr_decay_epochs",
                   "lr_decay_factor")


def finetune_config(config, continued_run=None, *, noise=True):
  """FixRes fine-tuning of `config` (its image size, steps and frozen blocks already set) as the
  reference does it (`remove_aug`, `fix_layer_num`, `train_last_step_num`): eval preprocessing for
  training, no RandAugment or Cutout; dropout and stochastic depth stay in the layers it trains
  (the frozen ones run in inference mode), unless `noise` is False; and, when `continued_run` (the
  train_config.json of the run it starts from) is given, the learning rate of the last steps of
  that run's schedule. Without it (a .keras file alone, a reference checkpoint) the schedule is
  the config's own, from step 0."""
  overrides = {"augment": False, "randaugment_layers": 0, "cutout": False}
  if not noise:
    overrides.update(dropout_rate=0.0, survival_prob=1.0)
  if continued_run is not None:
    overrides.update({name: continued_run["config"][name] for name in SCHEDULE_FIELDS})
    overrides["schedule_steps"] = continued_run["total_steps"]
  return dataclasses.replace(config, **overrides)


def interleave_replicas(dataset, labeled_rows, num_replicas):
  """Reorders [labeled; pseudo] batches to [lab_0, unl_0, lab_1, unl_1, ...] so that each replica's
  slice starts with its own labeled rows, as the loss expects (see losses.py)."""
  if num_replicas == 1:
    return dataset

  def reorder(images, targets):
    def per_replica(x):
      labeled = tf.reshape(x[:labeled_rows], [num_replicas, -1] + x.shape[1:].as_list())
      pseudo = tf.reshape(x[labeled_rows:], [num_replicas, -1] + x.shape[1:].as_list())
      return tf.reshape(tf.concat([labeled, pseudo], 1), [-1] + x.shape[1:].as_list())
    return per_replica(images), per_replica(targets)

  return dataset.map(reorder, num_parallel_calls=tf.data.AUTOTUNE)


def _fit_under_multi_worker(model):
  """Works around a fault of Keras 3's fit under MultiWorkerMirroredStrategy
  (tensorflow/tensorflow#72388), for this model instance only: fit averages each step's logs over
  workers with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars. Each log value is
  made a [1] vector, which that reduce turns back into a scalar. (Its other fault, the eager
  build from a first batch, is avoided for every strategy in `train`.)
  """
  train_step = model.train_step
  model.train_step = lambda data: {name: tf.reshape(value, [1])
                                   for name, value in train_step(data).items()}


class Backup(keras.callbacks.Callback):
  """What a killed run resumes from: the model and optimizer variables after the last Keras
  epoch, in `<backup_dir>/latest.weights.h5`.

  Keras' BackupAndRestore writes that file in place and the epoch in a second file: a kill while
  it saves leaves a file no rerun can load ("file signature not found"), and one between the two
  files resumes an epoch early. Here the file appears under its name only once complete, and the
  epoch to resume at is the restored optimizer step count over the steps per Keras epoch. Every
  worker restores from `backup_dir`; `write_dir` (default: the same) is where this one saves.
  """

  WEIGHTS = "latest.weights.h5"

  def __init__(self, backup_dir, steps_per_keras_epoch, write_dir=None):
    super().__init__()
    self.path = os.path.join(backup_dir, self.WEIGHTS)
    self.write_dir = write_dir or backup_dir
    self.steps_per_keras_epoch = steps_per_keras_epoch

  def restore(self, model):
    """Loads the backup, if any, into `model` (its optimizer built); returns the Keras epoch to
    start at."""
    if not tf.io.gfile.exists(self.path):
      return 0
    try:
      model.load_weights(self.path)
    except ValueError as e:
      raise ValueError(f"the backup {self.path} does not fit this run's model ({e}); it comes "
                       "from a run with other flags: remove it to start over") from e
    return int(model.optimizer.iterations.numpy()) // self.steps_per_keras_epoch

  def on_epoch_end(self, epoch, logs=None):
    tf.io.gfile.makedirs(self.write_dir)
    final = os.path.join(self.write_dir, self.WEIGHTS)
    with records.atomic_path(final) as tmp:  # still ends in .weights.h5, as Keras requires
      self.model.save_weights(tmp)

  def remove(self):
    if tf.io.gfile.exists(self.write_dir):
      tf.io.gfile.rmtree(self.write_dir)


class NonFiniteLossError(ValueError):
  """Training diverged: the loss became NaN or infinite (a ValueError, so main.py reports it as
  one line, as it does bad input)."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
  """Ends the run with `NonFiniteLossError` when a Keras epoch's mean loss is not finite.

  Placed before `Backup` in the callback list, so the diverged epoch is never saved: the backup
  keeps the last good epoch. Checked per Keras epoch, not per step: a NaN step makes the epoch's
  mean NaN, and a per-step check would sync the host on every step.
  """

  def __init__(self, backup_dir):
    super().__init__()
    self.backup_dir = backup_dir

  def on_epoch_end(self, epoch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
      step = int(self.model.optimizer.iterations.numpy())
      raise NonFiniteLossError(
          f"training diverged: the loss of Keras epoch {epoch + 1} is {float(loss)} (by step "
          f"{step}). Nothing was saved from that epoch; {self.backup_dir} holds the last good "
          "one, which a rerun of the same command resumes from. Lower --base_learning_rate (or "
          "lengthen --warmup_epochs) and remove the backup to start over.")


class _RunFacts(keras.callbacks.Callback):
  """Adds the steps done, the data epochs they make, wall time and the learning rate to each
  Keras epoch's logs (history and TensorBoard)."""

  def __init__(self, steps_per_epoch):
    super().__init__()
    self.steps_per_epoch = steps_per_epoch

  def on_train_begin(self, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      step = int(self.model.optimizer.iterations.numpy())
      logs["step"] = step
      logs["data_epoch"] = step / self.steps_per_epoch
      logs["wall_seconds"] = time.perf_counter() - self.start
      logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class StopAtStep(keras.callbacks.Callback):
  """Ends the last Keras epoch after its `tiling.last` steps, so the run is exactly the steps
  asked (plan.keras_epochs): counted from Keras' own epoch and batch indices, so no step reads
  a value back from the device."""

  def __init__(self, tiling):
    super().__init__()
    self.tiling = tiling
    self.in_last_epoch = False

  def on_epoch_begin(self, epoch, logs=None):
    self.in_last_epoch = epoch == self.tiling.count - 1

  def on_train_batch_end(self, batch, logs=None):
    if self.in_last_epoch and batch + 1 >= self.tiling.last:
      self.model.stop_training = True


# A saved model this far (top-1 points) below its batch-statistics accuracy on the same training
# images is reported as broken.
INFERENCE_GAP_WARNING = 0.10
# --batch_norm_recalibration: "auto" recalibrates only when the averaged moving statistics leave
# the saved model more than RECALIBRATION_GAP (top-1) below its batch-statistics accuracy on the
# sample. After a run of normal length the averaged statistics are as good or better (seed 3's
# Fashion-MNIST teacher: 79.38 validation top-1 kept, 78.84 recalibrated); after a short one they
# leave the model at chance, and then only recalibration saves it.
BATCH_NORM_RECALIBRATIONS = ("auto", "always", "never")
RECALIBRATION_GAP = 0.02


def recalibration_sample(config, labeled_data, batch_size=inference.BATCH_SIZE, replicas=1):
  """(dataset, batches): the labeled images batch norm is recalibrated on and the inference
  check reads, eval preprocessing, in record order, in batches of at most `batch_size` (the
  inference batch: the end of a run never holds more than one of them per replica set) rounded
  down to a multiple of the replicas."""
  images = config.batch_norm_recalibration_images
  batch = max(replicas, min(batch_size, images) // replicas * replicas)
  prep = preprocess_config(config, labeled_data, train=False)
  return pipeline.eval_dataset(labeled_data, prep, batch_size=batch), max(1, images // batch)


def settle_batch_norm(model, config, labeled_data, *, batch_size=inference.BATCH_SIZE,
                      strategy=None):
  """Leaves `model`'s batch-norm moving statistics as the run saves them, and says why.

  Measures top-1 on the recalibration sample in inference mode with the averaged moving
  statistics and under batch statistics (what training saw, without noise), then keeps the
  averaged ones or recalibrates (batch_norm.py) as --batch_norm_recalibration says (module
  constants). Every pass runs in batches of at most `batch_size` through `strategy`'s replicas.
  Returns {"batches", "images", "batch_statistics_top1", "averaged_inference_top1",
  "recalibrated", "inference_top1"}: the last is of the statistics kept.
  """
  strategy = strategy or tf.distribute.get_strategy()
  sample, batches = recalibration_sample(config, labeled_data, batch_size,
                                         distribute.inference_strategy(
                                             strategy).num_replicas_in_sync)
  sample = sample.take(batches)
  averaged = [keras.ops.convert_to_numpy(v) for v in ema.batch_norm_statistics(model)]
  averaged_top1 = evaluate.evaluate(model, sample, strategy=strategy)["top1"]
  found = batch_norm.recalibrate(model, sample, batches, strategy=strategy)
  mode = config.batch_norm_recalibration
  recalibrated = mode == "always" or (
      mode == "auto" and found["batch_statistics_top1"] - averaged_top1 > RECALIBRATION_GAP)
  if recalibrated:
    inference_top1 = evaluate.evaluate(model, sample, strategy=strategy)["top1"]
  else:
    for variable, value in zip(ema.batch_norm_statistics(model), averaged):
      variable.assign(value)
    inference_top1 = averaged_top1
  logging.info("batch norm (--batch_norm_recalibration=%s): %s; top-1 on %d labeled images: "
               "%.4f in inference mode (averaged statistics: %.4f), %.4f with batch statistics",
               mode, "recalibrated" if recalibrated else "kept the averaged statistics",
               found["images"], inference_top1, averaged_top1, found["batch_statistics_top1"])
  return {**found, "averaged_inference_top1": averaged_top1, "recalibrated": recalibrated,
          "inference_top1": inference_top1}


def saved_model_metrics(model, config, labeled_data, data, prep, eval_config, strategy):
  """Metrics on `data` of the model the run would save if it stopped now, measured as the end
  of the run measures it: the EMA weights (when kept), batch norm settled as at the end
  (`settle_batch_norm`), then `evaluate.evaluate_data`. Every variable it changes is put back
  after, bit for bit: training goes on as without it (recalibration runs without dropout and
  stochastic depth, so their seed generators do not move)."""
  statistics = ema.batch_norm_statistics(model)
  live = [keras.ops.convert_to_numpy(v) for v in statistics]
  averaged = ema.swap_to_ema(model) if config.ema_decay is not None else contextlib.nullcontext()
  try:
    with averaged:
      settle_batch_norm(model, config, labeled_data, batch_size=eval_config.batch_size,
                        strategy=strategy)
      return evaluate.evaluate_data(model, data, prep, eval_config, strategy=strategy)
  finally:
    # swap_to_ema puts back what it swapped; without the EMA, recalibration wrote the live ones.
    for variable, value in zip(statistics, live):
      variable.assign(value)


def check_inference_mode(model, config, labeled_data, *, batch_size=inference.BATCH_SIZE,
                         strategy=None):
  """Makes the saved model right in inference mode (`settle_batch_norm`), and checks it: a
  saved model more than INFERENCE_GAP_WARNING below its batch-statistics top-1 on the sample is
  logged as an error with both numbers. Returns the numbers (history.json's "inference_check").
  """
  found = settle_batch_norm(model, config, labeled_data, batch_size=batch_size,
                            strategy=strategy)
  gap = found["batch_statistics_top1"] - found["inference_top1"]
  if gap > INFERENCE_GAP_WARNING:
    logging.error(
        "the saved model is broken in inference mode: top-1 %.4f on %d training images against "
        "%.4f with batch statistics%s", found["inference_top1"], found["images"],
        found["batch_statistics_top1"],
        "" if found["recalibrated"] else
        f" (--batch_norm_recalibration={config.batch_norm_recalibration}: use auto or always)")
  return found


@dataclasses.dataclass(frozen=True)
class RunData:
  """What a run reads, counted before any work: the paths and their rows and classes."""
  labeled_data: str
  num_classes: int
  labeled_rows: int
  pseudo_labeled_data: str | None = None
  pseudo_rows: int | None = None


def load_run_data(config, labeled_data, *, pseudo_labeled_data=None, eval_data=None,
                  validation_data=None):
  """Counts and checks the run's data before any work: the class count (flag or manifest), the
  labeled and pseudo-labeled rows, and that the eval sets have the run's classes."""
  manifest = manifest_lib.load_manifest(labeled_data) if tf.io.gfile.isdir(labeled_data) else None
  num_classes = config.num_classes or (manifest or {}).get("num_classes")
  if not num_classes:
    raise ValueError(f"--num_classes is needed: {labeled_data!r} has no manifest naming classes")
  labeled_rows = pipeline.count_examples(labeled_data)
  if labeled_rows == 0:
    raise ValueError(f"--labeled_data {labeled_data!r} holds no records")
  pseudo_rows = None
  if pseudo_labeled_data:
    pseudo_rows = pipeline.count_examples(pseudo_labeled_data)
    if pseudo_rows == 0:
      raise ValueError(f"--pseudo_labeled_data {pseudo_labeled_data!r} holds no records")
  # Checked now rather than after training, where a wrong --eval_data would end the run.
  evaluate.check_eval_sets(num_classes, eval_data=eval_data, validation_data=validation_data)
  if config.eval_every_keras_epochs and not (validation_data or eval_data):
    raise ValueError("--eval_every_keras_epochs needs --validation_data (or --eval_data) to "
                     "evaluate on")
  return RunData(labeled_data, num_classes, labeled_rows, pseudo_labeled_data, pseudo_rows)


def plan_run(config, data, *, replicas=1, role=None):
  """The run's `plan.TrainPlan` (role: "student" with pseudo-labeled data, "finetune" for a
  config that continues another run's schedule or trains without augmentation, else
  "teacher")."""
  if role is None:
    role = ("student" if data.pseudo_labeled_data else
            "finetune" if config.schedule_steps or not config.augment else "teacher")
  return plan_lib.plan_training(config, role=role, labeled_rows=data.labeled_rows,
                                image_size=run_image_size(config), replicas=replicas,
                                pseudo_rows=data.pseudo_rows)


def result_settings(config):
  """A TrainConfig (or its recorded dict) as what shapes a run's result: every field but how
  often it evaluates while training, which a rerun may change."""
  fields = config if isinstance(config, dict) else dataclasses.asdict(config)
  return {k: v for k, v in fields.items() if k != "eval_every_keras_epochs"}


def run_request(config, data, init_checkpoint):
  """What shapes a run's result, compared with a workdir's recorded run (`check_workdir`)."""
  return {"config": result_settings(config), "labeled_data": data.labeled_data,
          "pseudo_labeled_data": data.pseudo_labeled_data, "init_checkpoint": init_checkpoint}


def setting_differences(recorded, settings, prefix="", skip=()):
  """'name: old -> new' for every leaf of two settings dicts that differs (nested names joined
  by dots), the top-level keys in `skip` aside."""
  found = []
  for key in sorted(set(recorded) | set(settings)):
    if not prefix and key in skip:
      continue
    old, new = recorded.get(key), settings.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      found += setting_differences(old, new, f"{prefix}{key}.")
    elif old != new:
      found.append(f"{prefix}{key}: {old!r} -> {new!r}")
  return found


def check_workdir(workdir, request, *, overwrite=False, chief=True):
  """The state of `workdir` for a run asked `request` (`run_request`): "new", "resume" (an
  interrupted run of the same request), or "finished" (its model is there: nothing to do).

  A workdir holding a run of other settings, finished or not, is refused with the differences
  named, unless `overwrite`, which first removes everything the old run left (its model,
  metrics, plots, backup and TensorBoard logs), so that nothing of it stays beside the new run
  (the `chief` of several workers removes it).
  """
  config_path = os.path.join(workdir, checkpoints.RUN_CONFIG)
  model_path = os.path.join(workdir, checkpoints.FINAL_MODEL)
  if overwrite:
    if chief and tf.io.gfile.exists(workdir):
      logging.info("train: --overwrite removes what %s holds first", workdir)
      tf.io.gfile.rmtree(workdir)
    return "new"
  if not tf.io.gfile.exists(config_path):
    return "new"
  with tf.io.gfile.GFile(config_path) as f:
    recorded = json.load(f)
  recorded_request = {k: recorded.get(k) for k in request}
  recorded_request["config"] = result_settings(recorded.get("config") or {})
  differing = setting_differences(recorded_request, json.loads(json.dumps(request)))
  finished = tf.io.gfile.exists(model_path)
  if differing:
    raise ValueError(
        f"--workdir {workdir} holds {'a finished' if finished else 'an interrupted'} train run "
        f"with other settings ({'; '.join(differing)}). Use another --workdir, or --overwrite "
        "to remove that run and train this one there.")
  return "finished" if finished else "resume"


def finished_result(workdir):
  """The result a finished run returned (its history.json), for a rerun of the same command."""
  with tf.io.gfile.GFile(os.path.join(workdir, "history.json")) as f:
    return {**json.load(f), "finished_before": True}


def check_init_checkpoint(init_checkpoint, init_checkpoint_format):
  """A warm start's checkpoint exists (before any work): a finished train run or .keras file,
  or a reference checkpoint's prefix."""
  if not init_checkpoint:
    return
  if init_checkpoint_format == "keras":
    checkpoints.resolve_model_file(init_checkpoint)
  elif not (tf.io.gfile.glob(init_checkpoint + "*") or tf.io.gfile.isdir(init_checkpoint)):
    raise FileNotFoundError(f"--init_checkpoint {init_checkpoint!r} does not exist")


def dry_run(config, labeled_data, workdir, *, pseudo_labeled_data=None, eval_data=None,
            validation_data=None, init_checkpoint=None, init_checkpoint_format="keras",
            strategy=None, overwrite=False, role=None):
  """What `train` with these arguments would do, checked as `train` checks them (data, classes,
  eval sets, the warm start's checkpoint, the workdir), without writing anything: the plan
  (`plan.TrainPlan.as_dict()`) with the workdir's state and the plan's lines for people."""
  strategy = strategy or tf.distribute.get_strategy()
  data = load_run_data(config, labeled_data, pseudo_labeled_data=pseudo_labeled_data,
                       eval_data=eval_data, validation_data=validation_data)
  plan = plan_run(config, data, replicas=strategy.num_replicas_in_sync, role=role)
  check_init_checkpoint(init_checkpoint, init_checkpoint_format)
  state = ("overwrite" if overwrite and tf.io.gfile.exists(workdir) else
           check_workdir(workdir, run_request(config, data, init_checkpoint)))
  return {"workdir": workdir, "workdir_state": state, **plan.as_dict(), "lines": plan.lines()}


def build(config, plan, num_classes, strategy, element_spec, *, init_checkpoint=None,
          init_checkpoint_format="keras", jit_compile=False):
  """The compiled model of the run, under `strategy`: warm-started, its first blocks frozen,
  weight decay, the TF1 RMSProp (with the EMA) on the plan's schedule, the loss and metrics."""
  # The policy is the model's from its construction on (Keras also wraps the optimizer for loss
  # scaling under float16 by it); the saved model is rebuilt outside it, so it loads in any.
  with strategy.scope(), distribute.precision(config.mixed_precision):
    model = build_student(config, num_classes, strategy.num_replicas_in_sync)
  with strategy.scope():
    if init_checkpoint:
      checkpoints.warm_start(model, init_checkpoint, init_checkpoint_format)
    if config.freeze_blocks:
      freeze_first_blocks(model, config.freeze_blocks)
    losses.add_weight_decay(model, config.weight_decay)
    optimizer = optimizers.TF1RMSProp(schedules.WarmupExponentialDecay.from_schedule(
        plan.schedule), moving_average_decay=config.ema_decay)
    if config.ema_decay is not None:
      optimizer.track_moving_averages(ema.batch_norm_statistics(model))
    loss_args = dict(labeled_batch_size=config.batch_size, label_smoothing=config.label_smoothing,
                     pseudo_labels=config.pseudo_labels)
    model.compile(optimizer=optimizer, loss=losses.NoisyStudentLoss(**loss_args),
                  metrics=[metrics.LabeledAccuracy(config.batch_size),
                           losses.LabeledLoss(**loss_args), losses.UnlabeledLoss(**loss_args)],
                  jit_compile=jit_compile)
    # Built here, not inside the first traced step: a third of the first fit's trace time.
    optimizer.build(model.trainable_variables)
    if tf.distribute.has_strategy():
      # Under a strategy, fit would read a first batch to build the loss and metrics, then
      # iterate the dataset anew: the seeded shuffles reshuffle, so the run trained on another
      # order than on one device, and not the same one twice. Their shapes are all they need.
      model._symbolic_build(data_batch=element_spec)  # pylint: disable=protected-access
      model._maybe_symbolic_build = lambda *a, **k: None  # pylint: disable=protected-access
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
      _fit_under_multi_worker(model)
  return model


def resume(model, backup):
  """Loads the backup of an interrupted run into `model`: (Keras epoch to start at, steps
  done)."""
  initial_epoch = backup.restore(model)
  if not initial_epoch:
    return 0, 0
  done = int(model.optimizer.iterations.numpy())
  # The backup (save_weights) lacks the seed generators of dropout and stochastic depth, which
  # restart at their first draw; each draws once per training step.
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    for generator in layer._seed_generators:  # pylint: disable=protected-access
      generator.state.assign(generator.state + [0, done])
  return initial_epoch, done


def training_stream(config, data, prep, strategy, steps_done=0):
  """The batches of the run from step `steps_done` on: the rows earlier steps trained on are
  skipped before decoding, and every later row keeps its augmentation seed."""
  num_workers, worker_index = distribute.worker_split(strategy)
  ratio = config.unlabeled_batch_ratio if data.pseudo_labeled_data else 0
  labeled = pipeline.labeled_dataset(
      data.labeled_data, prep, num_classes=data.num_classes, seed=config.seed,
      num_workers=num_workers, worker_index=worker_index,
      skip=steps_done * distribute.stream_rows_per_step(strategy, config.batch_size))
  pseudo = None
  if data.pseudo_labeled_data:
    pseudo = pipeline.pseudo_labeled_dataset(
        data.pseudo_labeled_data, prep, num_classes=data.num_classes,
        pseudo_labels=config.pseudo_labels, temperature=config.temperature, seed=config.seed + 1,
        num_workers=num_workers, worker_index=worker_index,
        skip=steps_done * distribute.stream_rows_per_step(
            strategy, batch_layout.unlabeled_rows(config.batch_size, ratio)))
  stream = interleave_replicas(
      pipeline.student_dataset(labeled, pseudo, config.batch_size, ratio), config.batch_size,
      strategy.num_replicas_in_sync)
  if num_workers > 1:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    stream = stream.with_options(options)
  return stream


def fit(model, stream, plan, callbacks, *, initial_epoch=0, verbose=None):
  """Trains exactly `plan.total_steps` steps in the plan's Keras epochs (the last one may be
  short); a resumed run starts at `initial_epoch`. Returns the Keras history."""
  if verbose is None:
    verbose = 1 if sys.stderr.isatty() else 2
  tiling = plan.keras_epochs
  if tiling.last < tiling.steps:  # only then a per-step hook
    callbacks = [*callbacks, StopAtStep(tiling)]
  # Keras prints progress to stdout; stdout is for the command's one JSON summary line.
  with contextlib.redirect_stdout(sys.stderr):
    history = model.fit(stream, epochs=tiling.count, steps_per_epoch=tiling.steps,
                        initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)
  return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def save(model, config, result, outputs, data, *, eval_data, validation_data, eval_prep,
         eval_config, strategy):
  """The end of the run, with the weights it saves (the EMA's when kept): batch norm settled
  and checked, the final eval, history.json, the curves, and last model.keras. Every pass runs
  in inference batches (`eval_config.batch_size`) through `strategy`'s replicas."""
  averaged = ema.swap_to_ema(model) if config.ema_decay is not None else contextlib.nullcontext()
  with averaged:
    result["inference_check"] = check_inference_mode(
        model, config, data.labeled_data, batch_size=eval_config.batch_size, strategy=strategy)
    if eval_data:
      result["eval"] = evaluate.compact_metrics(evaluate.eval_phase(
          model, eval_prep, outputs, eval_data=eval_data, validation_data=validation_data,
          config=eval_config, strategy=strategy,
          class_names=manifest_lib.class_names_for(eval_data, data.num_classes)))
    records.write_text_atomically(os.path.join(outputs, "history.json"),
                                  json.dumps(result, indent=1) + "\n")
    plots.training_curves(result["history"], os.path.join(outputs, "training_curves.png"),
                          evaluations=result.get("periodic_eval"),
                          first_epoch=result["initial_epoch"])
    checkpoints.save_model_atomically(model, os.path.join(outputs, checkpoints.FINAL_MODEL))


def record_run(outputs, request, config, plan, data, prep):
  """The run's first write, train_config.json (what it was asked and the facts it runs with);
  returns the facts (history.json repeats them) and logs the plan."""
  facts = {"num_labeled": data.labeled_rows, "steps_per_epoch": plan.steps_per_epoch,
           "total_steps": plan.total_steps, "steps_per_keras_epoch": plan.keras_epochs.steps,
           "keras_epochs": plan.keras_epochs.count, "num_classes": data.num_classes,
           "image_size": prep.image_size, "mean": list(prep.mean), "std": list(prep.std),
           "replicas": plan.replicas, "plan": plan.as_dict()}
  tf.io.gfile.makedirs(outputs)  # bad input has been reported by now
  records.write_text_atomically(
      os.path.join(outputs, checkpoints.RUN_CONFIG),
      json.dumps({**request, "config": dataclasses.asdict(config), **facts}, indent=1) + "\n")
  for line in plan.lines():
    logging.info("train: %s", line)
  return facts


def periodic_evaluation(model, config, plan, outputs, data, *, validation_data, eval_data,
                        eval_prep, eval_config, strategy):
  """The callback of --eval_every_keras_epochs (None when off): the model as it would be saved,
  on the validation split (choices are made on it), the test set only when there is none."""
  if not config.eval_every_keras_epochs:
    return None
  split, eval_set = ("validation", validation_data) if validation_data else ("eval", eval_data)
  return periodic_eval.PeriodicEvaluation(
      lambda: evaluate.scalar_metrics(saved_model_metrics(
          model, config, data.labeled_data, eval_set, eval_prep, eval_config, strategy)),
      every=config.eval_every_keras_epochs, total_epochs=plan.keras_epochs.count,
      steps_per_epoch=plan.steps_per_epoch, split=split,
      log_dir=os.path.join(outputs, "tensorboard", periodic_eval.LOG_SUBDIR))


def train(config, labeled_data, workdir, *, pseudo_labeled_data=None, eval_data=None,
          validation_data=None, init_checkpoint=None, init_checkpoint_format="keras", strategy=None,
          eval_config=None, verbose=None, overwrite=False, role=None):
  """Trains a teacher (no pseudo_labeled_data), a student, or a fine-tuned model.

  Args:
    config: `TrainConfig`.
    labeled_data: directory with manifest.json or glob of labeled shards.
    workdir: this run's directory (see module docstring).
    pseudo_labeled_data: filter output (directory or glob), for a student.
    eval_data: evaluated with the EMA weights at the end (metrics.json), optional.
    validation_data: evaluated beside eval_data (metrics.json's "validation"), optional. With
      config.eval_every_keras_epochs, also during training (history.json's "periodic_eval",
      `saved_model_metrics`); eval_data then only when there is no validation_data.
    init_checkpoint: warm start from a train workdir / .keras file (or a reference checkpoint).
    init_checkpoint_format: "keras" or "reference".
    strategy: a tf.distribute strategy (default: the current one); the end of the run (batch
      norm, final eval) runs under it too, in batches of eval_config.batch_size.
    eval_config: `evaluate.EvalConfig` of the end of the run (its batch size; the precision and
      XLA are the run's own).
    verbose: Keras fit verbosity; default: a progress bar on a terminal, a line per Keras epoch
      otherwise (logs stay readable).
    overwrite: remove a run of other settings found in `workdir` instead of refusing.
    role: the plan's role ("teacher", "student", "finetune"); default: `plan_run`'s guess.

  Returns:
    dict with the Keras history, the final eval metrics (if eval_data) and run facts (the plan
    among them); for a workdir whose run of the same settings finished before, that run's.
  """
  strategy = strategy or tf.distribute.get_strategy()
  data = load_run_data(config, labeled_data, pseudo_labeled_data=pseudo_labeled_data,
                       eval_data=eval_data, validation_data=validation_data)
  plan = plan_run(config, data, replicas=strategy.num_replicas_in_sync, role=role)
  check_init_checkpoint(init_checkpoint, init_checkpoint_format)
  request = run_request(config, data, init_checkpoint)
  chief = strategy.extended.should_checkpoint
  if check_workdir(workdir, request, overwrite=overwrite, chief=chief) == "finished":
    logging.info("train: %s holds a finished run of these settings; nothing to do", workdir)
    return finished_result(workdir)
  jit_compile = distribute.jit_compile(config.jit_compile, strategy)
  # Keras' multi-worker advice: every worker runs the same code, saving included (it may need
  # collective ops), but only the chief writes into the workdir; the others write into a
  # temporary directory removed at the end.
  worker_index = distribute.worker_split(strategy)[1]
  outputs = workdir if chief else tempfile.mkdtemp(prefix=f"train-worker-{worker_index}-")
  keras.utils.set_random_seed(config.seed)
  prep = preprocess_config(config, labeled_data)
  stream = training_stream(config, data, prep, strategy)
  model = build(config, plan, data.num_classes, strategy, stream.element_spec,
                init_checkpoint=init_checkpoint, init_checkpoint_format=init_checkpoint_format,
                jit_compile=jit_compile)
  backup = Backup(os.path.join(workdir, "backup"), plan.keras_epochs.steps,
                  write_dir=os.path.join(outputs, "backup"))
  with strategy.scope():
    initial_epoch, done = resume(model, backup)
  if done:
    # A resumed run goes on as the uninterrupted one would (tested bit for bit on one device):
    # fit's initial_epoch does not skip data, so the streams start after the restored steps.
    stream = training_stream(config, data, prep, strategy, done)

  run_facts = record_run(outputs, request, config, plan, data, prep)
  if initial_epoch:
    logging.info("train: resumed at Keras epoch %d (step %d)", initial_epoch, done)
  # Every evaluation, periodic or final, runs the same way (precision and XLA the run's own).
  eval_prep = preprocess_config(config, labeled_data, train=False)
  run_eval = dataclasses.replace(eval_config or evaluate.EvalConfig(), jit_compile=jit_compile,
                                 mixed_precision=config.mixed_precision)
  inference_strategy = distribute.inference_strategy(strategy)
  periodic = periodic_evaluation(
      model, config, plan, outputs, data, validation_data=validation_data, eval_data=eval_data,
      eval_prep=eval_prep, eval_config=run_eval, strategy=inference_strategy)
  callbacks = [
      _RunFacts(plan.steps_per_epoch),
      StopOnNonFiniteLoss(backup.path),
      # Before the backup: a run killed while evaluating redoes the epoch and its evaluation.
      *([periodic] if periodic else []),
      backup,
      keras.callbacks.TensorBoard(os.path.join(outputs, "tensorboard"), update_freq="epoch"),
  ]
  history = fit(model, stream, plan, callbacks, initial_epoch=initial_epoch, verbose=verbose)
  result = {"history": history, "initial_epoch": initial_epoch,
            "optimizer_iterations": int(model.optimizer.iterations.numpy()), **run_facts}
  if periodic:
    # As the Keras history: the evaluations of the epochs this process trained.
    result["periodic_eval"] = {"split": periodic.split, "every_keras_epochs": periodic.every,
                               "points": periodic.points}
  save(model, config, result, outputs, data, eval_data=eval_data,
       validation_data=validation_data, eval_prep=eval_prep, eval_config=run_eval,
       strategy=inference_strategy)
  # Only now: a run killed during the final evaluation or save resumes with its training done.
  backup.remove()
  if not chief:
    tf.io.gfile.rmtree(outputs)
  return result
