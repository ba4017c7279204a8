"""Training metrics that know the batch layout (labeled rows first, see data.pipeline)."""

import keras
from keras import ops

from noisy_student.training import losses


@keras.saving.register_keras_serializable(package="noisy_student")
class LabeledAccuracy(keras.metrics.Mean):
  """Top-1 accuracy on the labeled rows only; pseudo-labeled rows measure agreement, not skill."""

  def __init__(self, labeled_batch_size, name="accuracy", dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.labeled_batch_size = int(labeled_batch_size)

  def update_state(self, y_true, y_pred, sample_weight=None):
    del sample_weight
    rows = losses.labeled_rows(y_true, self.labeled_batch_size)
    hits = ops.equal(ops.argmax(y_true[:rows], axis=-1), ops.argmax(y_pred[:rows], axis=-1))
    return super().update_state(ops.cast(hits, "float32"))

  def get_config(self):
    return {"labeled_batch_size": self.labeled_batch_size, "name": self.name, "dtype": self.dtype}
