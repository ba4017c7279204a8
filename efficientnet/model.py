"""build_model: the EfficientNet family as a Keras functional model that returns logits."""

import keras

from efficientnet import blocks
from efficientnet import spec


@keras.saving.register_keras_serializable(package="efficientnet")
class EfficientNet(keras.Model):
  """A functional EfficientNet whose config is the builder's arguments.

  Subclassing only to make `get_config()` return (variant, classes, overrides): a saved `.keras`
  file then says which architecture it holds (`model.efficientnet_config`) and is rebuilt from
  that, instead of from a thousand serialized layers.
  """

  def __init__(self, variant, num_classes, *, image_size=None, small_image=False,
               dropout_rate=None, survival_prob=None, width_coefficient=None,
               depth_coefficient=None, synchronized_batch_norm=False, name=None, **kwargs):
    # Keras passes back functional-graph keys when deserialising; our config replaces them.
    for key in ("inputs", "outputs", "layers", "input_layers", "output_layers"):
      kwargs.pop(key, None)
    base = spec.get_variant(variant)
    if not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    config = dict(
        variant=variant, num_classes=num_classes, image_size=image_size,
        small_image=bool(small_image), dropout_rate=dropout_rate, survival_prob=survival_prob,
        width_coefficient=width_coefficient, depth_coefficient=depth_coefficient)
    width = base.width if width_coefficient is None else float(width_coefficient)
    depth = base.depth if depth_coefficient is None else float(depth_coefficient)
    dropout = base.dropout_rate if dropout_rate is None else float(dropout_rate)
    survival = spec.DEFAULT_SURVIVAL_PROB if survival_prob is None else float(survival_prob)
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {dropout}")
    plan = spec.expand_blocks(width, depth, small_image=small_image, survival_prob=survival)

    # Spatial size is left open so one model serves training, eval and FixRes at any size;
    # image_size only documents the intended resolution (default: the variant's, 32 for the
    # small-image model).
    inputs = keras.Input(shape=(None, None, 3), name="image")
    sync = bool(synchronized_batch_norm)
    x = blocks.conv_bn(inputs, spec.stem_filters(width), 3, 2,
                       ("stem_conv", "stem_bn", "stem_activation"), synchronized=sync)
    for block_args in plan:
      x = blocks.mbconv_block(x, block_args, synchronized=sync)
    x = blocks.conv_bn(x, spec.head_filters(width), 1, 1, ("top_conv", "top_bn", "top_activation"),
                       synchronized=sync)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
      x = blocks.Dropout(dropout, name="top_dropout")(x)
    # float32 logits under a mixed precision policy: the softmax and loss need the range.
    logits = keras.layers.Dense(num_classes, kernel_initializer=blocks.DENSE_KERNEL_INITIALIZER,
                                dtype="float32", name="predictions")(x)
    super().__init__(inputs=inputs, outputs=logits, name=name or variant, **kwargs)
    self.efficientnet_config = config
    self.image_size = image_size or (32 if small_image else base.resolution)
    self.block_plan = plan

  def get_config(self):
    return dict(self.efficientnet_config, name=self.name)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


def build_model(variant, num_classes, *, image_size=None, small_image=False, dropout_rate=None,
                survival_prob=None, width_coefficient=None, depth_coefficient=None,
                synchronized_batch_norm=False):
  """Builds an EfficientNet that maps normalised images [batch, H, W, 3] to logits.

  Args:
    variant: a name from `spec.VARIANTS`, e.g. "efficientnet-b0" or "efficientnet-l2".
    num_classes: size of the classifier.
    image_size: intended input resolution (default: the variant's, 32 with small_image); the
      model accepts any size.
    small_image: the reference's 32x32 model (stages 2 and 3 at stride 1).
    dropout_rate: dropout before the classifier (default: the variant's).
    survival_prob: stochastic depth survival probability of the last block's schedule (0.8).
    width_coefficient, depth_coefficient: override the variant's scaling (e.g. for tiny models).
    synchronized_batch_norm: normalise over all replicas of a tf.distribute strategy (training
      with several; TensorFlow backend). Not part of the saved config: it changes training only.
  """
  return EfficientNet(variant, num_classes, image_size=image_size, small_image=small_image,
                      dropout_rate=dropout_rate, survival_prob=survival_prob,
                      width_coefficient=width_coefficient, depth_coefficient=depth_coefficient,
                      synchronized_batch_norm=synchronized_batch_norm)
