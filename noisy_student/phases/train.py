"""The train phase: one `model.fit` loop for the teacher, the student and FixRes fine-tuning.

Teacher: labeled data only. Student: labeled + pseudo-labeled rows in every batch
(`unlabeled_batch_ratio` of them per labeled row). Fine-tune: a larger image size, no noise, the
first blocks frozen, a short schedule. Noise (RandAugment, dropout, stochastic depth) applies
whenever a model trains; the config sets its strength.

A run writes into its workdir: `backup/` (`Backup`: a killed run resumes from its last Keras
epoch when the same command runs again), `tensorboard/` (with `periodic_eval/` when it evaluates
while training, see training/periodic_eval.py), `history.json`, `train_config.json`
and, last, `model.keras` (the EMA weights) whose presence marks the run done. In a multi-worker
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
from data import manifest as manifest_lib
from data import pipeline
from data import preprocess
from data import records
from noisy_student.training import batch_norm
from noisy_student import checkpoints
from noisy_student import distribute
from noisy_student.training import ema
from noisy_student.phases import evaluate
from noisy_student.training import losses
from noisy_student.training import metrics
from noisy_student.training import optimizers
from noisy_student.training import periodic_eval
from noisy_student import plots
from noisy_student.training import schedules

MAX_STEPS_PER_KERAS_EPOCH = 1000  # backups and TensorBoard points at least this often
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
      pipeline.unlabeled_rows(self.batch_size, self.unlabeled_batch_ratio)
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


def preprocess_config(config, labeled_data, *, image_size=None, train=True):
  """The PreprocessConfig of a run; mean/std from the labeled data's manifest or a named set."""
  if config.normalization == "manifest":
    mean, std = manifest_lib.load_normalization(labeled_data)
  else:
    mean, std = preprocess.NORMALIZATIONS[config.normalization]
  size = image_size or config.image_size or (
      32 if config.small_image else efficientnet.get_variant(config.model).resolution)
  return preprocess.PreprocessConfig(
      image_size=size, small_image=uses_pad_crop(config),
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


def keras_epochs(total_steps, steps_per_epoch):
  """(steps per Keras epoch, total steps) so that Keras epochs tile the run.

  A Keras epoch is about one data epoch (at most MAX_STEPS_PER_KERAS_EPOCH steps): backups,
  TensorBoard points and progress lines come that often. The largest divisor of total_steps near
  that size keeps the total exact; when there is none (a prime total, say), the total is rounded
  up to a whole number of Keras epochs, less than one data epoch more.
  """
  target = max(1, min(int(round(steps_per_epoch)), MAX_STEPS_PER_KERAS_EPOCH, total_steps))
  for chunk in range(target, (target + 1) // 2 - 1, -1):
    if total_steps % chunk == 0:
      return chunk, total_steps
  return target, math.ceil(total_steps / target) * target


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
  """Adds wall time and the learning rate to each Keras epoch's logs (history and TensorBoard)."""

  def on_train_begin(self, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs["wall_seconds"] = time.perf_counter() - self.start
      logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def learning_rate_schedule(config, steps_per_epoch, total_steps):
  """The run's schedule: warm-up and decay over `total_steps`, or, with `config.schedule_steps`
  (FixRes fine-tuning), the last `total_steps` steps of a schedule that long (the reference's
  `train_last_step_num`: the rate continues where the training run's schedule ends)."""
  schedule_steps = config.schedule_steps or total_steps
  if schedule_steps < total_steps:
    raise ValueError(f"the run has {total_steps} steps, more than the {schedule_steps} of the "
                     "schedule whose tail it continues")
  decay_epochs = config.lr_decay_epochs
  if config.final_learning_rate is not None:
    decay_epochs = schedules.decay_epochs_for_final_learning_rate(
        config.base_learning_rate, config.final_learning_rate, schedule_steps / steps_per_epoch,
        warmup_epochs=config.warmup_epochs, decay_rate=config.lr_decay_factor)
  return schedules.WarmupExponentialDecay(
      schedules.scaled_learning_rate(config.base_learning_rate, config.batch_size),
      steps_per_epoch, warmup_epochs=config.warmup_epochs, decay_epochs=decay_epochs,
      decay_rate=config.lr_decay_factor, start_step=schedule_steps - total_steps)


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


def recalibration_sample(config, labeled_data):
  """(dataset, batches): the labeled images batch norm is recalibrated on and the inference
  check reads, eval preprocessing, in record order."""
  images = config.batch_norm_recalibration_images
  batch = min(config.batch_size, images)
  prep = preprocess_config(config, labeled_data, train=False)
  return pipeline.eval_dataset(labeled_data, prep, batch_size=batch), max(1, images // batch)


def settle_batch_norm(model, config, labeled_data):
  """Leaves `model`'s batch-norm moving statistics as the run saves them, and says why.

  Measures top-1 on the recalibration sample in inference mode with the averaged moving
  statistics and under batch statistics (what training saw, without noise), then keeps the
  averaged ones or recalibrates (batch_norm.py) as --batch_norm_recalibration says (module
  constants). Returns {"batches", "images", "batch_statistics_top1", "averaged_inference_top1",
  "recalibrated", "inference_top1"}: the last is of the statistics kept.
  """
  sample, batches = recalibration_sample(config, labeled_data)
  sample = sample.take(batches)
  averaged = [keras.ops.convert_to_numpy(v) for v in ema.batch_norm_statistics(model)]
  averaged_top1 = evaluate.evaluate(model, sample)["top1"]
  found = batch_norm.recalibrate(model, sample, batches)
  mode = config.batch_norm_recalibration
  recalibrated = mode == "always" or (
      mode == "auto" and found["batch_statistics_top1"] - averaged_top1 > RECALIBRATION_GAP)
  if recalibrated:
    inference_top1 = evaluate.evaluate(model, sample)["top1"]
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
      settle_batch_norm(model, config, labeled_data)
      return evaluate.evaluate_data(model, data, prep, eval_config, strategy=strategy)
  finally:
    # swap_to_ema puts back what it swapped; without the EMA, recalibration wrote the live ones.
    for variable, value in zip(statistics, live):
      variable.assign(value)


def check_inference_mode(model, config, labeled_data):
  """Makes the saved model right in inference mode (`settle_batch_norm`), and checks it: a
  saved model more than INFERENCE_GAP_WARNING below its batch-statistics top-1 on the sample is
  logged as an error with both numbers. Returns the numbers (history.json's "inference_check").
  """
  found = settle_batch_norm(model, config, labeled_data)
  gap = found["batch_statistics_top1"] - found["inference_top1"]
  if gap > INFERENCE_GAP_WARNING:
    logging.error(
        "the saved model is broken in inference mode: top-1 %.4f on %d training images against "
        "%.4f with batch statistics%s", found["inference_top1"], found["images"],
        found["batch_statistics_top1"],
        "" if found["recalibrated"] else
        f" (--batch_norm_recalibration={config.batch_norm_recalibration}: use auto or always)")
  return found


def train(config, labeled_data, workdir, *, pseudo_labeled_data=None, eval_data=None,
          validation_data=None, init_checkpoint=None, init_checkpoint_format="keras", strategy=None,
          eval_config=None, verbose=None):
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
    strategy: a tf.distribute strategy (default: the current one); the final eval runs under it
      too.
    eval_config: `evaluate.EvalConfig` of the final eval (its batch size; the precision and XLA
      are the run's own).
    verbose: Keras fit verbosity; default: a progress bar on a terminal, a line per Keras epoch
      otherwise (logs stay readable).

  Returns:
    dict with the Keras history, the final eval metrics (if eval_data) and run facts.
  """
  strategy = strategy or tf.distribute.get_strategy()
  num_workers, worker_index = distribute.worker_split(strategy)
  jit_compile = distribute.jit_compile(config.jit_compile, strategy)
  # Keras' multi-worker advice: every worker runs the same code, saving included (it may need
  # collective ops), but only the chief writes into the workdir; the others write into a
  # temporary directory removed at the end.
  chief = strategy.extended.should_checkpoint
  outputs = workdir if chief else tempfile.mkdtemp(prefix=f"train-worker-{worker_index}-")
  keras.utils.set_random_seed(config.seed)
  manifest = manifest_lib.load_manifest(labeled_data) if tf.io.gfile.isdir(labeled_data) else None
  num_classes = config.num_classes or (manifest or {}).get("num_classes")
  if not num_classes:
    raise ValueError(f"--num_classes is needed: {labeled_data!r} has no manifest naming classes")
  num_labeled = pipeline.count_examples(labeled_data)
  if num_labeled == 0:
    raise ValueError(f"--labeled_data {labeled_data!r} holds no records")
  # Checked now rather than after training, where a wrong --eval_data would end the run.
  evaluate.check_eval_sets(num_classes, eval_data=eval_data, validation_data=validation_data)
  if config.eval_every_keras_epochs and not (validation_data or eval_data):
    raise ValueError("--eval_every_keras_epochs needs --validation_data (or --eval_data) to "
                     "evaluate on")
  steps_per_epoch = num_labeled / config.batch_size
  total_steps = config.train_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
  chunk, total_steps = keras_epochs(total_steps, steps_per_epoch)
  prep = preprocess_config(config, labeled_data)

  ratio = config.unlabeled_batch_ratio if pseudo_labeled_data else 0

  def training_stream(steps_done=0):
    """The batches of the run from step `steps_done` on: the rows earlier steps trained on are
    skipped before decoding, and every later row keeps its augmentation seed."""
    labeled = pipeline.labeled_dataset(
        labeled_data, prep, num_classes=num_classes, seed=config.seed, num_workers=num_workers,
        worker_index=worker_index,
        skip=steps_done * distribute.stream_rows_per_step(strategy, config.batch_size))
    pseudo = None
    if pseudo_labeled_data:
      pseudo = pipeline.pseudo_labeled_dataset(
          pseudo_labeled_data, prep, num_classes=num_classes, pseudo_labels=config.pseudo_labels,
          temperature=config.temperature, seed=config.seed + 1, num_workers=num_workers,
          worker_index=worker_index,
          skip=steps_done * distribute.stream_rows_per_step(
              strategy, pipeline.unlabeled_rows(config.batch_size, ratio)))
    stream = interleave_replicas(
        pipeline.student_dataset(labeled, pseudo, config.batch_size, ratio), config.batch_size,
        strategy.num_replicas_in_sync)
    if num_workers > 1:
      options = tf.data.Options()
      options.experimental_distribute.auto_shard_policy = (
          tf.data.experimental.AutoShardPolicy.OFF)
      stream = stream.with_options(options)
    return stream

  dataset = training_stream()

  schedule = learning_rate_schedule(config, steps_per_epoch, total_steps)

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
    optimizer = optimizers.TF1RMSProp(schedule, moving_average_decay=config.ema_decay)
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
      model._symbolic_build(data_batch=dataset.element_spec)  # pylint: disable=protected-access
      model._maybe_symbolic_build = lambda *a, **k: None  # pylint: disable=protected-access
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
      _fit_under_multi_worker(model)
    backup = Backup(os.path.join(workdir, "backup"), chunk,
                    write_dir=os.path.join(outputs, "backup"))
    initial_epoch = backup.restore(model)
  if initial_epoch:
    # A resumed run goes on as the uninterrupted one would (tested bit for bit on one device):
    # fit's initial_epoch does not skip data, so the streams start after the restored steps.
    done = int(model.optimizer.iterations.numpy())
    dataset = training_stream(done)
    # The backup (save_weights) lacks the seed generators of dropout and stochastic depth, which
    # restart at their first draw; each draws once per training step.
    for layer in model._flatten_layers():  # pylint: disable=protected-access
      for generator in layer._seed_generators:  # pylint: disable=protected-access
        generator.state.assign(generator.state + [0, done])

  run_facts = {"num_labeled": num_labeled, "steps_per_epoch": steps_per_epoch,
               "total_steps": total_steps, "steps_per_keras_epoch": chunk,
               "num_classes": num_classes, "image_size": prep.image_size,
               "mean": list(prep.mean), "std": list(prep.std),
               "replicas": strategy.num_replicas_in_sync}
  tf.io.gfile.makedirs(outputs)  # the first write: bad input has been reported by now
  records.write_text_atomically(
      os.path.join(outputs, checkpoints.RUN_CONFIG),
      json.dumps({"config": dataclasses.asdict(config), "labeled_data": labeled_data,
                  "pseudo_labeled_data": pseudo_labeled_data, "init_checkpoint": init_checkpoint,
                  **run_facts}, indent=1) + "\n")
  logging.info("train %s: %d steps (%d Keras epochs of %d), %s%s", config.model, total_steps,
               total_steps // chunk, chunk, "student" if pseudo_labeled_data else "labeled only",
               f", resumed at Keras epoch {initial_epoch}" if initial_epoch else "")
  # Every evaluation, periodic or final, runs the same way (precision and XLA the run's own).
  eval_prep = preprocess_config(config, labeled_data, train=False)
  run_eval = dataclasses.replace(eval_config or evaluate.EvalConfig(), jit_compile=jit_compile,
                                 mixed_precision=config.mixed_precision)
  inference = distribute.inference_strategy(strategy)
  periodic = None
  if config.eval_every_keras_epochs:
    # The split choices are made on; the test set only when no validation split is given.
    split, data = ("validation", validation_data) if validation_data else ("eval", eval_data)
    periodic = periodic_eval.PeriodicEvaluation(
        lambda: evaluate.scalar_metrics(saved_model_metrics(
            model, config, labeled_data, data, eval_prep, run_eval, inference)),
        every=config.eval_every_keras_epochs, total_epochs=total_steps // chunk,
        steps_per_epoch=steps_per_epoch, split=split,
        log_dir=os.path.join(outputs, "tensorboard", periodic_eval.LOG_SUBDIR))
  callbacks = [
      _RunFacts(),
      StopOnNonFiniteLoss(backup.path),
      # Before the backup: a run killed while evaluating redoes the epoch and its evaluation.
      *([periodic] if periodic else []),
      backup,
      keras.callbacks.TensorBoard(os.path.join(outputs, "tensorboard"), update_freq="epoch"),
  ]
  if verbose is None:
    verbose = 1 if sys.stdout.isatty() else 2
  history = model.fit(dataset, epochs=total_steps // chunk, steps_per_epoch=chunk,
                      initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)

  result = {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "initial_epoch": initial_epoch,
            "optimizer_iterations": int(model.optimizer.iterations.numpy()), **run_facts}
  if periodic:
    # As the Keras history: the evaluations of the epochs this process trained.
    result["periodic_eval"] = {"split": split, "every_keras_epochs": periodic.every,
                               "points": periodic.points}
  averaged = ema.swap_to_ema(model) if config.ema_decay is not None else contextlib.nullcontext()
  with averaged:
    result["inference_check"] = check_inference_mode(model, config, labeled_data)
    if eval_data:
      result["eval"] = evaluate.compact_metrics(evaluate.eval_phase(
          model, eval_prep, outputs, eval_data=eval_data, validation_data=validation_data,
          config=run_eval, strategy=inference,
          class_names=manifest_lib.class_names_for(eval_data, num_classes)))
    records.write_text_atomically(os.path.join(outputs, "history.json"),
                                  json.dumps(result, indent=1) + "\n")
    plots.training_curves(result["history"], os.path.join(outputs, "training_curves.png"),
                          evaluations=result.get("periodic_eval"), first_epoch=initial_epoch)
    checkpoints.save_model_atomically(model, os.path.join(outputs, checkpoints.FINAL_MODEL))
  # Only now: a run killed during the final evaluation or save resumes with its training done.
  backup.remove()
  if not chief:
    tf.io.gfile.rmtree(outputs)
  return result

