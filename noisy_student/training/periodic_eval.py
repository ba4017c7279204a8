"""Evaluation while training (--eval_every_keras_epochs): the model as the run would save it,
every N Keras epochs and after the last.

The unit is the Keras epoch (train.keras_epochs: about one pass over the labeled data, at most
MAX_STEPS_PER_KERAS_EPOCH steps), the run's one clock: history.json's rows, TensorBoard's
epoch_* points, progress lines and backups all come at its end. An evaluation there lines up
with each of them, a resumed run evaluates after the same epochs as an uninterrupted one, and no
per-step callback is needed. In data epochs the points would fall between those rows, or be
rounded onto them.

What is measured is `measure()`, given by train (`train.saved_model_metrics`): the EMA weights
with the batch-norm statistics settled as at the end, through the eval path, every variable put
back after. This callback schedules it and records the results: in `points` (history.json's
"periodic_eval"), the log, and TensorBoard scalars `<split>_top1`, `_top5`, `_loss`, `_ece` in
`tensorboard/periodic_eval`, at step = Keras' own 0-based epoch index, where its epoch_* scalars
are.
"""

import logging

import keras
import tensorflow as tf

LOG_SUBDIR = "periodic_eval"
SCALARS = ("top1", "top5", "loss", "ece")


def evaluates_after(epoch, every, total_epochs):
  """Whether an evaluation follows Keras epoch `epoch` (0-based, as Keras counts): every
  `every` epochs, and after the last, so that the curve ends at the saved model."""
  return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == total_epochs)


class PeriodicEvaluation(keras.callbacks.Callback):
  """Calls `measure()` (-> a dict of single numbers) after the Keras epochs `evaluates_after`
  picks; each point adds `keras_epoch` (1-based: epochs done), `step` (optimizer steps done) and
  `data_epochs` (passes over the labeled data, step / steps_per_epoch)."""

  def __init__(self, measure, *, every, total_epochs, steps_per_epoch, split, log_dir):
    super().__init__()
    self.measure = measure
    self.every = every
    self.total_epochs = total_epochs
    self.steps_per_epoch = steps_per_epoch
    self.split = split
    self.log_dir = log_dir
    self.points = []
    self._writer = None

  def on_epoch_end(self, epoch, logs=None):
    if not evaluates_after(epoch, self.every, self.total_epochs):
      return
    step = int(self.model.optimizer.iterations.numpy())
    point = {"keras_epoch": epoch + 1, "step": step, "data_epochs": step / self.steps_per_epoch,
             **self.measure()}
    self.points.append(point)
    logging.info("%s after Keras epoch %d (step %d): top-1 %.4f, loss %.4f", self.split,
                 epoch + 1, step, point["top1"], point["loss"])
    if self._writer is None:  # first use: a run that never evaluates leaves no directory
      self._writer = tf.summary.create_file_writer(self.log_dir)
    with self._writer.as_default():
      for name in SCALARS:
        tf.summary.scalar(f"{self.split}_{name}", point[name], step=epoch)
    self._writer.flush()

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()
      self._writer = None
