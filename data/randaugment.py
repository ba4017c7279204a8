"""Google's RandAugment (noisystudent / tensorflow/tpu `randaugment.py`) in plain TF ops.

No tensorflow-addons, no tf-models-official and no `py_function`, so it runs inside
`tf.data.Dataset.map` and on TPU hosts. Each of `num_layers` layers picks one of the 16
reference ops with a stateless random integer and runs only that op (`tf.switch_case`); the op
is always applied and there is no identity op, as in the reference. Geometry uses
`ImageProjectiveTransformV3` with nearest sampling and a gray (128) fill, which equals the
reference's `tf.contrib.image` + wrap/unwrap. The magnitude M maps to each op's argument through
`l = M / 10` with the reference's scales (`_TABLE` below).

    seed = tf.random.experimental.stateless_fold_in([seed_a, seed_b], index)
    image = randaugment(image, num_layers=2, magnitude=27, seed=seed)

The same seed gives the same image; a seed per example (e.g. from `Dataset.enumerate()`) keeps a
`tf.data` pipeline deterministic.

Reference quirks. Default: the reference's observable behaviour under TF 2.x (l = M / 10).
`fix_reference_quirks=True` fixes the first three, which are plain bugs:

| quirk | reference = our default | fixed |
|---|---|---|
| Contrast gray | `min(255, H*W/256)`, a pixel count: 196 at 224 px, 4 at 32 px | mean gray (PIL) |
| Solarize | threshold `int(l*256)` wraps mod 256: M=10 inverts all, M=27 uses 179 | `<= 256` |
| Posterize | bits `int(l*4)` out of [1, 8] (M<2.5, M>=22.5): shift clamped, 1 bit kept | `[1, 8]` |
| direction | Posterize and Solarize get milder as M grows | kept |
| M > 10 | rotate > 30 deg, shear > 0.3, translate > const, enhance > 1.9 | kept |
| M = 5 | Color, Contrast, Brightness, Sharpness have factor 1.0 (identity) | kept |
| no-op prob | a `prob` is drawn and ignored: every layer applies its op; no identity op | kept |

"kept" where the behaviour is the published policy the recipes' M values were tuned for. (At
224 px, M = 27 translates by 270 px, so TranslateX/Y return an all-gray image, as the reference.)
One deviation in both modes: Sharpness smooths with integer weights and divides by 13 last. The
reference's float `kernel / 13` truncates some exact multiples of 13 one level low, depending on
the convolution kernel (on TF 2.21 CPU: 8% of them, 0.6% of the pixels of a noise image).
AutoContrast keeps the reference's float32 arithmetic, which differs from PIL's float64 by one
level on some values (a channel's maximum can map to 254).

Default `translate_const` / `cutout_const` (`default_constants`), from the shorter side s:

| s | translate_const | cutout_const | source |
|---|---|---|---|
| <= 32 | s // 8 (4 at 32) | s // 8 (4 at 32) | noisystudent's small-image (SVHN) pipeline |
| > 32 | 100 * s / 224 | 40 * s / 224 | the reference's 100 / 40 at 224, as a fraction |

The reference keeps 100 / 40 pixels at every ImageNet size (240 to 800): pass them explicitly for
pixel parity there. Sizes from 33 to ~100 px have no reference and get the ImageNet fractions.
Random draws (signs, the Cutout centre, the op choice) are stateless, so they cannot follow the
reference's RNG stream; the op order is noisystudent's (SolarizeAdd before Cutout).
"""

import dataclasses
import functools
import math

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128


def blend(image1, image2, factor):
  """Returns `image1 + factor * (image2 - image1)`, clipped and truncated to uint8.

  The images are uint8, or float32 holding integer values.
  """
  image1 = tf.cast(image1, tf.float32)
  image2 = tf.cast(image2, tf.float32)
  # Clipping is a no-op for 0 <= factor <= 1, which is why the reference skips it there.
  blended = image1 + tf.cast(factor, tf.float32) * (image2 - image1)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def autocontrast(image):
  """Stretches each channel's [min, max] to [0, 255] in float32; constant channels are kept."""
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
  # Per-channel scale and offset (1 and 0 for constant channels) avoid an image-sized
  # `tf.where`, which is slow on CPU.
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, -lo * scale, 0.0)
  stretched = tf.cast(image, tf.float32) * scale + offset
  return tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.uint8)


def equalize(image):
  """PIL's histogram equalisation, per channel (all three channels in one pass)."""
  index = tf.cast(image, tf.int32) + tf.range(0, 768, 256)  # value + 256 * channel
  hist = tf.reshape(tf.math.bincount(index, minlength=768, maxlength=768), [3, 256])
  top_count = tf.gather(hist, tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.int32), batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - top_count) // 255
  safe_step = tf.maximum(step, 1)[:, tf.newaxis]
  lut = (tf.cumsum(hist, axis=1, exclusive=True) + safe_step // 2) // safe_step
  lut = tf.where(step[:, tf.newaxis] > 0, tf.clip_by_value(lut, 0, 255), tf.range(256))
  return tf.gather(tf.reshape(tf.cast(lut, tf.uint8), [-1]), index)


def invert(image):
  return 255 - image


def posterize(image, bits):
  """Keeps the top `bits` (1 to 8) bits of every value."""
  shift = tf.cast(8 - bits, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold):
  """Inverts values >= `threshold` (0 to 256)."""
  # For uint8, 255 - x == x ^ 255: XOR with a 0/255 mask beats `tf.where` several times on CPU.
  mask = tf.cast(tf.cast(image, tf.int32) >= threshold, tf.uint8) * 255
  return tf.bitwise.bitwise_xor(image, mask)


def solarize_add(image, addition, threshold=128):
  """Adds `addition` (clipped to [0, 255]) to values below `threshold`."""
  below = tf.cast(image < threshold, tf.int32)
  added = tf.cast(image, tf.int32) + tf.cast(addition, tf.int32) * below
  return tf.cast(tf.clip_by_value(added, 0, 255), tf.uint8)


def color(image, factor):
  gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  return blend(gray, image, factor)


def contrast(image, factor, fix_reference_quirks=False):
  """Blends from a constant gray: the reference's `H*W/256`, or the true mean when fixed."""
  if fix_reference_quirks:
    mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float64))
    gray = tf.floor(mean + 0.5)
  else:
    # The reference's "mean" is sum(histogram) / 256, i.e. the pixel count / 256.
    gray = tf.cast(tf.size(image) // 3, tf.float32) / 256.0
    gray = tf.floor(tf.clip_by_value(gray, 0.0, 255.0))
  return blend(tf.cast(gray, tf.float32), image, factor)


def brightness(image, factor):
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Blends from PIL's SMOOTH filter (3x3, centre 5, / 13, truncated); the border is unsmoothed.

  The filter is a separable 3x3 box sum plus 4x the centre, exact in float32, divided by 13
  last: every value is exactly floor(sum / 13) (the module docstring says how the reference's
  float kernel differs). A box sum is also several times faster than `depthwise_conv2d` on CPU.
  """
  pixels = tf.cast(image, tf.float32)
  rows = pixels[:-2] + pixels[1:-1] + pixels[2:]
  total = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:] + 4.0 * pixels[1:-1, 1:-1]
  smooth = tf.concat([pixels[1:-1, :1], tf.floor(total / 13.0), pixels[1:-1, -1:]], axis=1)
  smooth = tf.concat([pixels[:1], smooth, pixels[-1:]], axis=0)
  return blend(smooth, pixels, factor)


def _transform(image, matrix):
  """Warps with the 8-value projective `matrix` (output pixel -> input pixel), nearest, gray."""
  warped = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[tf.newaxis],
      transforms=tf.cast(tf.stack(matrix)[tf.newaxis], tf.float32),
      output_shape=tf.shape(image)[:2],
      fill_value=tf.constant(FILL_VALUE, tf.float32),
      interpolation="NEAREST",
      fill_mode="CONSTANT")
  return tf.ensure_shape(warped[0], image.shape)


def rotate(image, degrees):
  """Rotates about the image centre, counter-clockwise for positive `degrees`."""
  radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  height = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
  width = tf.cast(tf.shape(image)[1], tf.float32) - 1.0
  cos, sin = tf.cos(radians), tf.sin(radians)
  x_offset = (width - (cos * width - sin * height)) / 2.0
  y_offset = (height - (sin * width + cos * height)) / 2.0
  return _transform(image, [cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])


def shear_x(image, level):
  return _transform(image, [1.0, tf.cast(level, tf.float32), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image, level):
  return _transform(image, [1.0, 0.0, 0.0, tf.cast(level, tf.float32), 1.0, 0.0, 0.0, 0.0])


def translate_x(image, pixels):
  """Output column x reads input column x + `pixels`, as the reference's translate_x."""
  return _transform(image, [1.0, 0.0, tf.cast(pixels, tf.float32), 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image, pixels):
  return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, tf.cast(pixels, tf.float32), 0.0, 0.0])


def _window(size, center, pad_size):
  """Marks [center - pad_size, center + pad_size) within range(size), as the reference's mask."""
  offsets = tf.range(size) - center
  return tf.logical_and(offsets >= -pad_size, offsets < pad_size)


def cutout(image, pad_size, seed):
  """Fills the (2 * pad_size)^2 square at a uniform random centre, clipped, with gray."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  row_seed, col_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  row = tf.random.stateless_uniform([], row_seed, minval=0, maxval=height, dtype=tf.int32)
  col = tf.random.stateless_uniform([], col_seed, minval=0, maxval=width, dtype=tf.int32)
  inside = tf.logical_and(_window(height, row, pad_size)[:, tf.newaxis],
                          _window(width, col, pad_size)[tf.newaxis, :])
  return tf.where(inside[:, :, tf.newaxis], tf.constant(FILL_VALUE, tf.uint8), image)


@dataclasses.dataclass(frozen=True)
class _Constants:
  """What an op's argument may depend on besides the magnitude."""
  seed: tf.Tensor | None
  translate_const: tf.Tensor
  cutout_const: tf.Tensor
  fix_reference_quirks: bool


def default_constants(height, width):
  """Returns `(translate_const, cutout_const)` for an image size (module docstring, 2nd table)."""
  side = tf.cast(tf.minimum(height, width), tf.float64)
  eighth = tf.floor(side / 8.0)
  small = side <= 32.0
  return (tf.where(small, eighth, side * 100.0 / 224.0),
          tf.where(small, eighth, side * 40.0 / 224.0))


def _seed(seed):
  """A shape-[2] seed tensor; None draws one from TF's global generator (not reproducible)."""
  if seed is None:
    return tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
  return tf.convert_to_tensor(seed)


def _random_sign(seed):
  """-1 or +1 with probability 1/2 each, as the reference's `_randomly_negate_tensor`."""
  negate = tf.random.stateless_uniform([], _seed(seed)) < 0.5
  return tf.cast(tf.where(negate, -1, 1), tf.float64)


def _posterize_bits(lvl, constants):
  bits = tf.cast(lvl * 4.0, tf.int32)
  if constants.fix_reference_quirks:
    return (tf.clip_by_value(bits, 1, 8),)
  # The reference's shift `8 - bits` reaches TF as uint8, whose shifts clamp it to 7 (1 bit kept).
  return (tf.where(tf.logical_and(bits >= 1, bits <= 8), bits, 1),)


def _solarize_threshold(lvl, constants):
  threshold = tf.cast(lvl * 256.0, tf.int32)
  if constants.fix_reference_quirks:
    return (tf.minimum(threshold, 256),)
  # The reference's Python-int threshold is converted to uint8 when compared with the image.
  return (threshold % 256,)


# name -> (image op, its arguments from lvl = M / MAX_LEVEL and the constants), in noisystudent's
# order. The reference negates Rotate, Shear and Translate with probability 1/2.
_TABLE = {
    "AutoContrast": (autocontrast, lambda lvl, c: ()),
    "Equalize": (equalize, lambda lvl, c: ()),
    "Invert": (invert, lambda lvl, c: ()),
    "Rotate": (rotate, lambda lvl, c: (_random_sign(c.seed) * lvl * 30.0,)),
    "Posterize": (posterize, _posterize_bits),
    "Solarize": (solarize, _solarize_threshold),
    "Color": (color, lambda lvl, c: (lvl * 1.8 + 0.1,)),
    "Contrast": (contrast, lambda lvl, c: (lvl * 1.8 + 0.1, c.fix_reference_quirks)),
    "Brightness": (brightness, lambda lvl, c: (lvl * 1.8 + 0.1,)),
    "Sharpness": (sharpness, lambda lvl, c: (lvl * 1.8 + 0.1,)),
    "ShearX": (shear_x, lambda lvl, c: (_random_sign(c.seed) * lvl * 0.3,)),
    "ShearY": (shear_y, lambda lvl, c: (_random_sign(c.seed) * lvl * 0.3,)),
    "TranslateX": (translate_x, lambda lvl, c: (_random_sign(c.seed) * lvl * c.translate_const,)),
    "TranslateY": (translate_y, lambda lvl, c: (_random_sign(c.seed) * lvl * c.translate_const,)),
    "SolarizeAdd": (solarize_add, lambda lvl, c: (tf.cast(lvl * 110.0, tf.int64),)),
    "Cutout": (cutout, lambda lvl, c: (tf.cast(lvl * c.cutout_const, tf.int32), _seed(c.seed))),
}


def _make_op(image_fn, args_fn):
  """Wraps `image_fn` as an `OPS` entry: `op(image, level, **constants)`."""

  def op(image, level, *, seed=None, translate_const=None, cutout_const=None,
         fix_reference_quirks=False):
    image = tf.convert_to_tensor(image)
    if translate_const is None or cutout_const is None:
      default_translate, default_cutout = default_constants(tf.shape(image)[0], tf.shape(image)[1])
      translate_const = default_translate if translate_const is None else translate_const
      cutout_const = default_cutout if cutout_const is None else cutout_const
    constants = _Constants(seed, tf.cast(translate_const, tf.float64),
                           tf.cast(cutout_const, tf.float64), fix_reference_quirks)
    # The reference computes arguments from a Python float; float64 reproduces its truncations.
    return image_fn(image, *args_fn(tf.cast(level, tf.float64) / MAX_LEVEL, constants))

  op.__name__ = image_fn.__name__
  op.__doc__ = f"`{image_fn.__name__}` with its argument from magnitude `level` (`_TABLE`)."
  return op


OPS = {name: _make_op(image_fn, args_fn) for name, (image_fn, args_fn) in _TABLE.items()}


def layer_choices(seed, num_layers):
  """(op index into `OPS`, the op's seed) of each of `num_layers` layers, a function of `seed`.

  Each layer's index is a uniform integer in [0, len(OPS)) drawn from that layer's own split
  of `seed`, so layers choose independently. `randaugment` applies exactly these choices.
  """
  choices = []
  for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
    choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))
    choice = tf.random.stateless_uniform([], choice_seed, 0, len(OPS), dtype=tf.int32)
    choices.append((choice, op_seed))
  return choices


# AutoGraph has nothing to convert here (no tensor-dependent Python control flow); skipping it
# cuts tracing inside `Dataset.map` by about a third.
@tf.autograph.experimental.do_not_convert
def randaugment(image, num_layers, magnitude, *, seed=None, translate_const=None,
                cutout_const=None, fix_reference_quirks=False):
  """Applies `num_layers` ops, each chosen uniformly from `OPS` and always applied.

  Args:
    image: uint8 [H, W, 3]; H and W may be dynamic.
    num_layers: N, a Python int (the layers are unrolled into the graph).
    magnitude: M, a Python number or scalar tensor, on the reference's scale (10 is the nominal
      maximum; recipes use up to 28).
    seed: shape-[2] int32/int64 tensor: the same seed gives the same output. None draws one from
      TF's global generator (not reproducible).
    translate_const: TranslateX/Y pixels at M = 10; None: `default_constants`.
    cutout_const: Cutout half-size at M = 10; None: `default_constants`.
    fix_reference_quirks: fix the reference's Contrast, Solarize and Posterize bugs (module
      docstring).

  Returns:
    The augmented uint8 image, same shape.
  """
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f"randaugment expects a uint8 image, got {image.dtype.name}")
  default_translate, default_cutout = default_constants(tf.shape(image)[0], tf.shape(image)[1])
  constants = {
      "translate_const": default_translate if translate_const is None else translate_const,
      "cutout_const": default_cutout if cutout_const is None else cutout_const,
      "fix_reference_quirks": fix_reference_quirks,
  }
  ops = list(OPS.values())
  for choice, op_seed in layer_choices(_seed(seed), num_layers):
    # Only the chosen branch runs: computing every op per layer is what makes Keras's slow.
    image = tf.switch_case(choice, [functools.partial(op, image, magnitude, seed=op_seed,
                                                      **constants) for op in ops])
  return image


@tf.autograph.experimental.do_not_convert
def randaugment_batch(images, num_layers, magnitude, *, seed=None, **kwargs):
  """`randaugment` on each image of a [B, H, W, 3] batch; image i uses `seed` folded with i."""
  seed = _seed(seed)

  def augment(args):
    image, index = args
    return randaugment(image, num_layers, magnitude,
                       seed=tf.random.experimental.stateless_fold_in(seed, index), **kwargs)

  indices = tf.range(tf.shape(images)[0])
  return tf.map_fn(augment, (images, indices),
                   fn_output_signature=tf.TensorSpec(images.shape[1:], tf.uint8))
