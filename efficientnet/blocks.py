"""Keras layers for one MBConv block and the squeeze-and-excitation unit.

The numerics that decide weight parity with the reference live here and nowhere else: TF "same"
padding (asymmetric for stride 2), batch norm momentum 0.99 / epsilon 1e-3, swish, and the
reference's initializers. Written with keras.layers only, so it runs on TensorFlow and JAX.
"""

import keras

BATCH_NORM_MOMENTUM = 0.99
BATCH_NORM_EPSILON = 1e-3

# N(0, sqrt(2 / fan_out)), not truncated (reference `conv_kernel_initializer`). Keras' fan_out of a
# [kh, kw, in, out] kernel is kh*kw*out, and of a depthwise [k, k, C, 1] kernel k*k, as there.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}
# U(-1/sqrt(units), 1/sqrt(units)) (reference `dense_kernel_initializer`).
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


@keras.saving.register_keras_serializable(package="efficientnet")
class Dropout(keras.layers.Dropout):
  """keras.layers.Dropout whose draws differ between the replicas of a tf.distribute strategy.

  Keras' layer draws from one seed generator, a variable mirrored over the replicas, so under
  MirroredStrategy or TPUStrategy every replica drew the same masks: row i of every replica's
  slice was dropped alike, and the student's dropout and stochastic depth were as many times
  less varied as there are replicas. Here the replica's index is folded into the seed. On one
  replica, and on JAX (one program draws for the whole batch), it is Keras' layer, bit for bit.
  """

  def call(self, inputs, training=False):
    replica = _replica_in_sync()
    if not training or self.rate <= 0 or replica is None:
      return super().call(inputs, training=training)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the TF backend only)
    seed = tf.random.experimental.stateless_fold_in(self.seed_generator.next(), replica)
    # int32 seeds, as Keras' own dropout casts them (XLA needs them).
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    shape = tf.shape(inputs)
    noise_shape = (shape if self.noise_shape is None else
                   [shape[i] if size is None else size for i, size in enumerate(self.noise_shape)])
    return tf.nn.experimental.stateless_dropout(inputs, rate=self.rate, noise_shape=noise_shape,
                                                seed=seed)


@keras.saving.register_keras_serializable(package="efficientnet")
class BatchNormalization(keras.layers.BatchNormalization):
  """keras.layers.BatchNormalization whose training step is TensorFlow's fused kernel.

  Keras 3 normalises a training batch with separate ops (moments: mean, squared difference,
  mean; then rsqrt, multiplies, adds) and differentiates each of them; on a CPU those passes were
  39% of a B0 training step's kernel time at 224x224 (benchmarks/RESULTS.md). FusedBatchNormV3
  does the forward pass in one kernel and FusedBatchNormGradV3 the backward pass in one. The
  math is Keras': batch mean and biased batch variance normalise the batch, and the moving
  statistics get `moving * momentum + batch * (1 - momentum)` with the biased variance (the fused
  kernel returns the unbiased one; it is scaled back). Same variables, names and config, so
  saved models, checkpoints and `isinstance(layer, keras.layers.BatchNormalization)` are as
  before.

  Keras' own path runs wherever the fused one would differ or cannot run: other backends (JAX),
  inference mode and frozen layers (the moving statistics; bit for bit Keras'), synchronized
  batch statistics (all-reduced over replicas), masks, renorm, and inputs other than 4-D
  channels-last.
  """

  def _fusable(self, inputs, training, mask):
    return (training and self.trainable and mask is None and not self.renorm
            and not self.synchronized and self.scale and self.center
            and len(inputs.shape) == 4 and self.axis in (-1, 3)
            and keras.backend.backend() == "tensorflow")

  def call(self, inputs, training=None, mask=None):
    if not self._fusable(inputs, training, mask):
      return super().call(inputs, training=training, mask=mask)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the TF backend only)
    # float32 statistics and normalisation whatever the input's dtype, as Keras does.
    x = tf.cast(inputs, tf.float32)
    empty = tf.constant([], tf.float32)
    y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32),
        mean=empty, variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0,
        data_format="NHWC", is_training=True)
    # The kernel returns variance * n / max(n - 1, 1) for n values a channel.
    shape = tf.shape(x)
    count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
    variance = unbiased_variance * (tf.maximum(count - 1.0, 1.0) / count)
    momentum = self.momentum
    self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
    self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
    return tf.cast(y, self.compute_dtype)


def _replica_in_sync():
  """This replica's index in its tf.distribute strategy when there are several, else None."""
  if keras.backend.backend() != "tensorflow":
    return None
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return None
  return context.replica_id_in_sync_group


def conv_bn(x, filters, kernel_size, strides, name, *, activation=True, depthwise=False,
            synchronized=False):
  """Conv (no bias) -> batch norm -> optional swish, named `{name}conv|bn|activation` style.

  `synchronized`: batch statistics over the global batch of a tf.distribute strategy (all
  replicas), so that R replicas of B/R rows train as one device of B rows; TensorFlow backend
  only. Off, each replica normalises its own rows (Keras' default; the reference does so per TPU
  core up to 8 cores).
  """
  conv_name, bn_name, act_name = name
  if depthwise:
    x = keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding="same", use_bias=False,
        depthwise_initializer=CONV_KERNEL_INITIALIZER, name=conv_name)(x)
  else:
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER, name=conv_name)(x)
  x = BatchNormalization(
      momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, synchronized=synchronized,
      name=bn_name)(x)
  if activation:
    x = keras.layers.Activation("swish", name=act_name)(x)
  return x


def squeeze_excite(x, filters_se, filters_expanded, prefix):
  s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "se_squeeze")(x)
  s = keras.layers.Conv2D(filters_se, 1, activation="swish",
                          kernel_initializer=CONV_KERNEL_INITIALIZER,
                          name=prefix + "se_reduce")(s)
  s = keras.layers.Conv2D(filters_expanded, 1, activation="sigmoid",
                          kernel_initializer=CONV_KERNEL_INITIALIZER,
                          name=prefix + "se_expand")(s)
  return keras.layers.Multiply(name=prefix + "se_excite")([x, s])


def mbconv_block(inputs, args, synchronized=False):
  """One inverted-residual block from finished BlockArgs (see spec.expand_blocks)."""
  p = args.name
  x = inputs
  if args.expand_ratio != 1:
    x = conv_bn(x, args.filters_expanded, 1, 1,
                (p + "expand_conv", p + "expand_bn", p + "expand_activation"),
                synchronized=synchronized)
  x = conv_bn(x, None, args.kernel_size, args.strides,
              (p + "dwconv", p + "bn", p + "activation"), depthwise=True,
              synchronized=synchronized)
  if 0 < args.se_ratio <= 1:
    x = squeeze_excite(x, args.filters_se, args.filters_expanded, p)
  x = conv_bn(x, args.filters_out, 1, 1, (p + "project_conv", p + "project_bn", None),
              activation=False, synchronized=synchronized)
  if not args.has_identity_skip:
    return x
  if args.drop_rate > 0:
    # Stochastic depth: one Bernoulli(survival) draw per example, kept paths scaled by 1/survival,
    # identity at inference. Dropout with a per-example noise shape is exactly that.
    x = Dropout(args.drop_rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
  return keras.layers.Add(name=p + "add")([x, inputs])
