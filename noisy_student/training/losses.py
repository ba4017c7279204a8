"""The Noisy Student loss and its L2 weight decay, as the reference weights them.

Reference: noisystudent `main.py:model_fn` (digest noisy-student-reference.md section 4).
A training batch is one tensor whose first `labeled_batch_size` rows are labeled (one-hot
targets) and whose remaining rows are pseudo-labeled (soft probabilities, or one-hot in hard
mode). With p = 1 the reference's data loss is

  (lab_loss * lab_bsz + unl_loss * unl_bsz) / lab_bsz = sum of all per-row cross entropies / lab_bsz

where labeled rows use label smoothing, soft pseudo-labeled rows plain cross entropy and hard
pseudo-labeled rows the same label smoothing. Its total loss adds
`weight_decay * sum(l2_loss(v))` over the trainable variables outside batch normalization.

Row layout under `tf.distribute`: Keras runs the loss once per replica on that replica's slice of
the global batch and averages the replicas. `labeled_batch_size` is always the *global* number; the
loss divides it by `num_replicas_in_sync`, so each replica's slice must start with its own
`labeled_batch_size / num_replicas` labeled rows (the input pipeline interleaves
[lab_0, unl_0, lab_1, unl_1, ...]). On JAX the loss sees the global batch as one array.
Batches must be full (`drop_remainder=True`), as in the reference.
"""

import keras
from keras import ops

PSEUDO_LABEL_MODES = ("soft", "hard")


def _replicas_in_sync():
  # Keras scales per-replica losses by the same count (losses.loss.scale_loss_for_distribution).
  if keras.backend.backend() != "tensorflow":
    return 1
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.distribute.get_strategy().num_replicas_in_sync


def labeled_rows(y_true, labeled_batch_size):
  """Number of labeled rows at the top of the batch this replica sees (a Python int)."""
  replicas = _replicas_in_sync()
  if labeled_batch_size % replicas:
    raise ValueError(f"labeled_batch_size={labeled_batch_size} is not divisible by the "
                     f"{replicas} replicas in sync")
  rows = labeled_batch_size // replicas
  static_rows = y_true.shape[0]
  if static_rows is not None and static_rows < rows:
    raise ValueError(f"The batch has {static_rows} rows but {rows} labeled rows were expected "
                     "per replica; use full batches (drop_remainder=True)")
  return rows


def _check_mode(pseudo_labels):
  if pseudo_labels not in PSEUDO_LABEL_MODES:
    raise ValueError(f"pseudo_labels must be one of {PSEUDO_LABEL_MODES}, got {pseudo_labels!r}")


def smooth_labels(one_hot, label_smoothing):
  """TF1 `softmax_cross_entropy` smoothing: `one_hot * (1 - ls) + ls / num_classes`."""
  num_classes = ops.cast(ops.shape(one_hot)[-1], one_hot.dtype)
  return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def _cross_entropy(targets, logits):
  return -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)


def _per_row_cross_entropy(y_true, y_pred, labeled_rows, label_smoothing, pseudo_labels):
  """Returns the per-row cross entropies of the labeled rows and of the pseudo-labeled rows."""
  y_true = ops.cast(y_true, "float32")
  # Logits may be float16/bfloat16 under mixed precision; log_softmax needs the range.
  y_pred = ops.cast(y_pred, "float32")
  labeled = _cross_entropy(smooth_labels(y_true[:labeled_rows], label_smoothing),
                           y_pred[:labeled_rows])
  unlabeled_targets = y_true[labeled_rows:]
  if pseudo_labels == "hard":
    unlabeled_targets = smooth_labels(unlabeled_targets, label_smoothing)
  unlabeled = _cross_entropy(unlabeled_targets, y_pred[labeled_rows:])
  return labeled, unlabeled


def loss_terms(y_true, y_pred, labeled_batch_size, label_smoothing=0.1, pseudo_labels="soft"):
  """The reference's `lab_loss` and `unl_loss`: batch means over each part of the batch.

  Args:
    y_true: targets [rows, classes]; the first `labeled_batch_size` rows one-hot.
    y_pred: logits [rows, classes].
    labeled_batch_size: global number of labeled rows (see the module docstring).
    label_smoothing: smoothing of the labeled (and hard pseudo-labeled) targets.
    pseudo_labels: "soft" (plain cross entropy) or "hard" (smoothed like the labeled rows).

  Returns:
    (labeled_loss, unlabeled_loss), scalars; unlabeled_loss is 0 when there are no such rows.
  """
  _check_mode(pseudo_labels)
  rows = labeled_rows(y_true, labeled_batch_size)
  labeled, unlabeled = _per_row_cross_entropy(y_true, y_pred, rows, label_smoothing,
                                              pseudo_labels)
  count = ops.cast(ops.shape(unlabeled)[0], "float32")
  return ops.mean(labeled), ops.divide_no_nan(ops.sum(unlabeled), count)


@keras.saving.register_keras_serializable(package="noisy_student")
class NoisyStudentLoss(keras.losses.Loss):
  """`(lab_loss * lab_bsz + unl_loss * unl_bsz) / lab_bsz` for use in `model.compile`.

  `call` returns one value per row, `cross_entropy * rows / labeled_rows`, so Keras'
  "sum_over_batch_size" reduction (sum / rows) yields exactly the reference's scalar, and Keras'
  per-replica scaling under `tf.distribute` (applied to that reduction, not to a scalar returned
  by `call`) keeps the gradient equal to the global batch's. With no pseudo-labeled rows (the
  teacher) it is the labeled loss alone.

  Args:
    labeled_batch_size: global number of labeled rows at the top of each batch.
    label_smoothing: 0.1 in the reference.
    pseudo_labels: "soft" or "hard" (see `loss_terms`).
    name: loss name.
  """

  def __init__(self, labeled_batch_size, label_smoothing=0.1, pseudo_labels="soft",
               name="noisy_student_loss", **kwargs):
    # The scaling in `call` is only right for this reduction; a config may still carry it.
    kwargs.pop("reduction", None)
    super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
    _check_mode(pseudo_labels)
    if labeled_batch_size < 1:
      raise ValueError(f"labeled_batch_size must be positive, got {labeled_batch_size}")
    self.labeled_batch_size = int(labeled_batch_size)
    self.label_smoothing = float(label_smoothing)
    self.pseudo_labels = pseudo_labels

  def call(self, y_true, y_pred):
    rows = labeled_rows(y_true, self.labeled_batch_size)
    labeled, unlabeled = _per_row_cross_entropy(y_true, y_pred, rows, self.label_smoothing,
                                                self.pseudo_labels)
    per_row = ops.concatenate([labeled, unlabeled], axis=0)
    return per_row * (ops.cast(ops.shape(per_row)[0], per_row.dtype) / rows)

  def get_config(self):
    return {"labeled_batch_size": self.labeled_batch_size,
            "label_smoothing": self.label_smoothing,
            "pseudo_labels": self.pseudo_labels, "name": self.name}


class _PartLoss(keras.metrics.Mean):
  """Mean cross entropy over one part of the batch, averaged over rows across batches."""

  _labeled_part = True

  def __init__(self, labeled_batch_size, label_smoothing=0.1, pseudo_labels="soft", name=None,
               dtype=None):
    super().__init__(name=name, dtype=dtype)
    _check_mode(pseudo_labels)
    self.labeled_batch_size = int(labeled_batch_size)
    self.label_smoothing = float(label_smoothing)
    self.pseudo_labels = pseudo_labels

  def update_state(self, y_true, y_pred, sample_weight=None):
    del sample_weight  # The reference's part losses are unweighted means.
    rows = labeled_rows(y_true, self.labeled_batch_size)
    labeled, unlabeled = _per_row_cross_entropy(y_true, y_pred, rows, self.label_smoothing,
                                                self.pseudo_labels)
    return super().update_state(labeled if self._labeled_part else unlabeled)

  def get_config(self):
    return {"labeled_batch_size": self.labeled_batch_size,
            "label_smoothing": self.label_smoothing,
            "pseudo_labels": self.pseudo_labels, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="noisy_student")
class LabeledLoss(_PartLoss):
  """Metric `labeled_loss`: the reference's `lab/loss` (smoothed cross entropy, labeled rows)."""

  def __init__(self, labeled_batch_size, label_smoothing=0.1, pseudo_labels="soft",
               name="labeled_loss", dtype=None):
    super().__init__(labeled_batch_size, label_smoothing, pseudo_labels, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="noisy_student")
class UnlabeledLoss(_PartLoss):
  """Metric `unlabeled_loss`: the reference's `ext/loss` (pseudo-labeled rows; 0 without any)."""

  _labeled_part = False

  def __init__(self, labeled_batch_size, label_smoothing=0.1, pseudo_labels="soft",
               name="unlabeled_loss", dtype=None):
    super().__init__(labeled_batch_size, label_smoothing, pseudo_labels, name=name, dtype=dtype)


def weight_decay_variables(model):
  """The trainable variables the reference decays: all but those of batch-norm layers.

  SE biases and the classifier bias are included, as in the reference.
  """
  # Keras' own traversal (what `model.losses` uses) also reaches layers nested in custom layers.
  layers = model._flatten_layers(include_self=False)  # pylint: disable=protected-access
  batch_norm = {id(v) for layer in layers
                if isinstance(layer, keras.layers.BatchNormalization) for v in layer.weights}
  return [v for v in model.trainable_variables if id(v) not in batch_norm]


def weight_decay_loss(model, weight_decay):
  """`weight_decay * sum(v**2) / 2` over `weight_decay_variables(model)` (TF1 `l2_loss`).

  Reads the variables' current values: for a custom train step on TensorFlow. In `model.fit`
  use `add_weight_decay`, which also works inside JAX's stateless step.
  """
  total = ops.sum(ops.stack([ops.sum(ops.square(v)) for v in weight_decay_variables(model)]))
  return weight_decay * total / 2.0


def add_weight_decay(model, weight_decay):
  """Makes `model.fit` add `weight_decay_loss(model, weight_decay)` to the loss.

  `model.add_loss` takes no callables in Keras 3, so the term is attached as an L2 regularizer
  `weight_decay / 2` on each decayed variable; Keras sums those into `model.losses` each step
  (and scales them per replica under `tf.distribute`). Regularizers on variables are not saved in
  the model config: call this again after rebuilding or loading a model for training.
  """
  regularizer = keras.regularizers.L2(weight_decay / 2.0)
  for variable in weight_decay_variables(model):
    variable.regularizer = regularizer
