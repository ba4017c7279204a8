"""Exponential moving average of the weights with the reference's semantics.

The reference applies `tf.train.ExponentialMovingAverage(0.9999, num_updates=global_step)` after
every optimizer step to the trainable variables *and* the batch-norm moving mean/variance
(`utils.get_all_variable`), and evaluates, predicts and exports with the averages. The shadow is
initialised to the variable's value and updated as `shadow -= (shadow - var) * (1 - decay)` with
`decay = min(0.9999, (1 + n) / (10 + n))`, n the global step *after* the update: the update runs
under a control dependency on the train op, which has already incremented the step.

Design. The averages are optimizer variables (`MovingAverageMixin`), updated inside the compiled
train step right after the weight update:
- whatever saves the optimizer saves the averages, in the same file as the weights and the step
  count: `keras.callbacks.BackupAndRestore`, `model.save_weights`, `model.save`. A resume restores
  them exactly, with no extra files to keep in step;
- the update runs on every step, also with `steps_per_execution > 1`, without a host round trip.
A callback updating shadows in `on_train_batch_end` was rejected: it needs files of its own beside
BackupAndRestore's (a crash between the two writes leaves them out of step), it sees only every
k-th step with `steps_per_execution=k`, and it costs an eager update per step. Keras' `use_ema`
was rejected: fixed momentum without the warm-up, trainable variables only, and `fit()` overwrites
the weights with the averages when it returns.

Batch norm. `model.fit` passes the optimizer only the trainable variables, so the moving statistics
are registered once, before the optimizer is built:
`optimizer.track_moving_averages(ema.batch_norm_statistics(model))`. Their update reads the
variables inside the train step, which is right on the TensorFlow backend (and torch). The JAX
trainer gives the optimizer only the trainable values, so registering extra variables there raises;
trainable-only averaging works on every backend.
"""

import contextlib

import keras
from keras import ops


def moving_average_decay(step, max_decay):
  """`min(max_decay, (1 + step) / (10 + step))`: TF1's `num_updates` warm-up."""
  step = ops.cast(step, "float32")
  return ops.minimum(max_decay, (1.0 + step) / (10.0 + step))


def batch_norm_statistics(model):
  """The moving mean and variance of every BatchNormalization layer in `model`."""
  # Keras' own traversal (what `model.losses` uses) also reaches layers nested in custom layers.
  layers = model._flatten_layers(include_self=False)  # pylint: disable=protected-access
  return [v for layer in layers if isinstance(layer, keras.layers.BatchNormalization)
          for v in (layer.moving_mean, layer.moving_variance)]


class _VariableRefs:
  """Holds model variables without the optimizer's tracker adopting them as optimizer state."""

  def __init__(self, variables=()):
    self.variables = list(variables)


def _copy_initializer(variable):
  """Initial value: the variable's value when the optimizer is built.

  `train_on_batch` builds the optimizer inside the traced step, after the forward pass. Inside a
  tf.function the copy would become an in-graph initializer that runs there and picks up the
  batch-norm statistics of that first forward pass; `tf.init_scope` reads the value eagerly.
  """
  def initializer(shape, dtype=None):
    del shape, dtype
    with _eager_scope():
      return ops.copy(variable.value)
  return initializer


def _eager_scope():
  if keras.backend.backend() != "tensorflow":
    return contextlib.nullcontext()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.init_scope()


class MovingAverageMixin:
  """Adds the reference's EMA to a `keras.optimizers.Optimizer` subclass (first in the bases).

  Args:
    moving_average_decay: 0.9999 in the reference; None disables the averages.
  """

  def __init__(self, *args, moving_average_decay=None, **kwargs):
    super().__init__(*args, **kwargs)
    if moving_average_decay is not None:
      if not 0.0 < moving_average_decay < 1.0:
        raise ValueError(f"moving_average_decay must be in (0, 1), got {moving_average_decay}")
      if self.use_ema or self.gradient_accumulation_steps:
        raise ValueError("moving_average_decay replaces use_ema and does not support "
                         "gradient_accumulation_steps")
    self.moving_average_decay = moving_average_decay
    self._extra_averaged = _VariableRefs()
    self._averaged = _VariableRefs()
    self._averages = []

  def track_moving_averages(self, variables):
    """Also averages `variables` (non-trainable ones, i.e. `batch_norm_statistics(model)`).

    Must be called before the optimizer is built (before `fit`), in the same way on a fresh run
    and on a resume, so that the optimizer's variables are the same list in both.
    """
    if self.moving_average_decay is None:
      raise ValueError("track_moving_averages needs moving_average_decay to be set")
    if self.built:
      raise ValueError("track_moving_averages must be called before the optimizer is built")
    variables = list(variables)
    if variables and keras.backend.backend() == "jax":
      raise NotImplementedError(
          "Averaging non-trainable variables needs the TensorFlow or torch backend: the JAX "
          "trainer passes the optimizer the trainable values only")
    known = {id(v) for v in self._extra_averaged.variables}
    self._extra_averaged.variables.extend(v for v in variables if id(v) not in known)

  @property
  def moving_averages(self):
    """(model variable, average) pairs, trainable variables first; empty until built."""
    return list(zip(self._averaged.variables, self._averages))

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    if self.moving_average_decay is None:
      return
    trainable = {id(v) for v in variables}
    averaged = list(variables) + [v for v in self._extra_averaged.variables
                                  if id(v) not in trainable]
    self._averaged = _VariableRefs(averaged)
    self._averages = [self.add_variable_from_reference(v, name="moving_average",
                                                       initializer=_copy_initializer(v))
                      for v in averaged]

  def apply(self, grads, trainable_variables=None):
    grads = list(grads)
    super().apply(grads, trainable_variables)
    if grads and self._averages:
      self._update_moving_averages()

  def _update_moving_averages(self):
    if keras.backend.backend() == "tensorflow" and _tf_has_strategy():
      _update_moving_averages_distributed(self)
      return
    decay = moving_average_decay(self._iterations, self.moving_average_decay)
    for variable, average in self.moving_averages:
      self.assign_sub(average, (average - ops.cast(variable, average.dtype)) * (1.0 - decay))

  def get_config(self):
    config = super().get_config()
    config["moving_average_decay"] = self.moving_average_decay
    return config


def _tf_has_strategy():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.distribute.has_strategy()


def _update_moving_averages_distributed(optimizer):
  """tf.distribute update: in cross-replica context, one assignment per device, as Keras' TF
  optimizer updates its slots. Without a strategy Keras builds the optimizer inside the traced
  step, and there these per-variable `extended.update`s made the first trace ~3x slower than the
  plain assignments, which are equivalent on one device."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def update(average, value, decay):
    return average.assign_sub((average - tf.cast(value, average.dtype)) * (1.0 - decay))

  def update_all(distribution, pairs):
    # `iterations` was already incremented by `apply`: n is the step just taken (1 at first).
    decay = moving_average_decay(optimizer.iterations, optimizer.moving_average_decay)
    for variable, average in pairs:
      distribution.extended.update(average.value, update, args=(variable.value, decay),
                                   group=False)

  strategy = optimizer._distribution_strategy  # pylint: disable=protected-access
  tf.__internal__.distribute.interim.maybe_merge_call(update_all, strategy,
                                                      optimizer.moving_averages)


def _checked_pairs(model, optimizer):
  # Keras wraps the optimizer in a LossScaleOptimizer under a mixed_float16 policy.
  optimizer = getattr(optimizer, "inner_optimizer", optimizer)
  if not getattr(optimizer, "moving_averages", None):
    raise ValueError("The optimizer keeps no moving averages: use an optimizer with "
                     "moving_average_decay set, built (i.e. after fit or a load)")
  averaged = {id(v) for v, _ in optimizer.moving_averages}
  missing = [v.path for v in model.trainable_variables + batch_norm_statistics(model)
             if id(v) not in averaged]
  if missing:
    raise ValueError(f"No moving average for {missing[:5]} ({len(missing)} variables); call "
                     "optimizer.track_moving_averages(batch_norm_statistics(model)) before fit")
  return optimizer.moving_averages


@contextlib.contextmanager
def swap_to_ema(model, optimizer=None):
  """Puts the averages into `model` for the `with` block and the live weights back after it.

  For evaluation, prediction and the final export (`with swap_to_ema(model): model.save(...)`).
  The live values wait in host memory; the averages in the optimizer are left untouched.

  Args:
    model: the trained model.
    optimizer: the optimizer holding the averages (default: `model.optimizer`).
  """
  pairs = _checked_pairs(model, optimizer or model.optimizer)
  live = [ops.convert_to_numpy(variable) for variable, _ in pairs]
  try:
    for variable, average in pairs:
      variable.assign(average.value)
    yield model
  finally:
    for (variable, _), value in zip(pairs, live):
      variable.assign(value)
