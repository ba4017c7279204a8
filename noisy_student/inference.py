"""The model in inference mode, one batch at a time: the one step that predict, eval, train's
inference check and robustness run.

Every batch runs at one static shape: a short batch (a shard's or a split's last) is padded with
zeros to the full batch and the padding's rows are dropped from the result. A TPU needs that, and
XLA would otherwise compile a second program for the last batch. Under a strategy with several
replicas, each replica gets its own slice of the batch (`experimental_distribute_values_from_
function`, the per-replica form of `experimental_distribute_dataset` that leaves the keys and
labels of a batch on the host) and the logits are gathered back in order.
"""

import numpy as np
import tensorflow as tf

from noisy_student import distribute

# Images per inference batch (--inference_batch_size): predict's, eval's and the inference
# check's; a training batch can be far larger than fits at inference resolution.
BATCH_SIZE = 256


class InferenceStep:
  """`step(images)` -> float32 NumPy logits [n, C] of `model` (training=False) for n <= batch_size
  images.

  Args:
    model: a Keras model from images to logits, built (or loaded) under `strategy`'s scope.
    batch_size: the largest batch it takes; every call runs at this size, rounded up to a
      multiple of the replicas.
    strategy: a tf.distribute strategy (default: the current one); under
      MultiWorkerMirroredStrategy, this worker's devices (`distribute.inference_strategy`).
    jit_compile: compile the step with XLA.
    training: run the model in training mode (batch norm on each replica's batch statistics, as
      batch-norm recalibration needs): no padding then, since zero rows would change the
      statistics; a call takes any number of images that the replicas share evenly.
  """

  def __init__(self, model, batch_size, *, strategy=None, jit_compile=False, training=False):
    self.strategy = strategy = distribute.inference_strategy(strategy)
    self.replicas = replicas = strategy.num_replicas_in_sync
    self.per_replica = -(-int(batch_size) // replicas)
    self.batch_size = self.per_replica * replicas
    self.training = training

    def logits(images):
      return tf.cast(model(images, training=training), tf.float32)

    self._logits = tf.function(logits, jit_compile=bool(jit_compile), reduce_retracing=True)
    self._step = tf.function(self._distributed_step, reduce_retracing=True)

  def _distributed_step(self, per_replica_images):
    return self.strategy.gather(self.strategy.run(self._logits, args=(per_replica_images,)),
                                axis=0)

  def __call__(self, images):
    images = tf.convert_to_tensor(images)
    count = int(images.shape[0])
    if count > self.batch_size:
      raise ValueError(f"inference batch of {count} images, more than its {self.batch_size}")
    if self.training:  # any size up to batch_size, shared evenly, without padding
      if count % self.replicas:
        raise ValueError(f"{count} images do not split evenly over {self.replicas} replicas")
      padded, per = images, count // self.replicas
    else:
      padded = tf.pad(images,
                      [[0, self.batch_size - count]] + [[0, 0]] * (images.shape.rank - 1))
      per = self.per_replica
    # Cut per replica on the host; each slice is then copied to its replica's device.
    per_replica = self.strategy.experimental_distribute_values_from_function(
        lambda context: padded[context.replica_id_in_sync_group * per:
                               (context.replica_id_in_sync_group + 1) * per])
    return np.asarray(self._step(per_replica))[:count]
