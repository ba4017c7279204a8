"""The one preprocessing path: image bytes -> normalised float32 [S, S, 3], for train and eval.

Two recipes, as in the reference (tensorflow/tpu and google-research/noisystudent
`preprocessing.py`):

* Large images (ImageNet style), train: inception crop (`sample_distorted_bounding_box`, area
  0.08-1, aspect 3/4-4/3, 10 attempts; center crop when the sampler gives up and returns the whole
  image) -> legacy bicubic resize -> random flip -> [RandAugment on uint8] -> [Cutout].
  Eval: center crop of size/(size+32) of the shorter side -> legacy bicubic resize.
* Small images (`small_image=True`, the 32x32 SVHN/CIFAR recipe), train: [resize when the stored
  size differs] -> [RandAugment with translate/cutout constants image_size//8] -> [Cutout, a
  2*(image_size//4) gray square] -> reflect-pad image_size//8 (4 at 32, as the reference) and
  random crop -> [flip]. Eval: identity, or a resize when the stored size differs
  (Fashion-MNIST's 28x28 -> 32x32).

Then `normalize`, the only place mean and std are applied. Resized values are not clipped unless
they go through uint8 for RandAugment/Cutout (the reference's bicubic overshoot is kept).

Every random choice is a stateless op seeded from the per-image `seed` (shape [2] int), so the
same seed gives the same pixels, inside or outside tf.data.
"""

import dataclasses

import tensorflow as tf

from data import decode

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# noisystudent `task_info.py`, on the 0-255 scale.
SVHN_MEAN = (0.4376821 * 255, 0.4437697 * 255, 0.47280442 * 255)
SVHN_STD = (0.19803012 * 255, 0.20101562 * 255, 0.19703614 * 255)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "svhn": (SVHN_MEAN, SVHN_STD)}

# Eval crop = size / (size + CROP_PADDING) of the shorter side. The released checkpoints and
# published accuracies use 32 (tensorflow/tpu before 22d5cab; noisystudent keeps 32).
CROP_PADDING = 32


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """How images become model inputs.

  Attributes:
    image_size: side S of the square model input.
    small_image: the 32x32 recipe (pad-and-crop) instead of the ImageNet one (inception crop).
    randaugment_layers: RandAugment N; 0 turns it off.
    randaugment_magnitude: RandAugment M (reference scale, 0-30).
    cutout: apply the extra Cutout (gray square of side 2*(image_size//4)) after RandAugment,
      as the reference's small-image recipe does whenever augmentation is on.
    flip: random horizontal flip in training (turn off for digits such as SVHN).
    augment: False makes training use the eval preprocessing (no crop, flip, RandAugment or
      Cutout): the reference's `remove_aug`, for FixRes fine-tuning.
    mean: per-channel mean on the 0-255 scale.
    std: per-channel std on the 0-255 scale.
  """
  image_size: int
  small_image: bool = False
  randaugment_layers: int = 0
  randaugment_magnitude: float = 0.0
  cutout: bool = False
  flip: bool = True
  mean: tuple = IMAGENET_MEAN
  std: tuple = IMAGENET_STD
  augment: bool = True


def normalize(image, config):
  """(x - mean) / std on the 0-255 scale: the single normalisation of every stream."""
  mean = tf.constant(config.mean, tf.float32)
  std = tf.constant(config.std, tf.float32)
  return (tf.cast(image, tf.float32) - mean) / std


def resize_bicubic(image, size):
  """The reference's TF1 `resize_bicubic` (a = -0.75, no half-pixel centers): [H,W,C] -> float32."""
  images = tf.cast(image, tf.float32)[tf.newaxis]
  return tf.raw_ops.ResizeBicubic(images=images, size=[size, size], align_corners=False,
                                  half_pixel_centers=False)[0]


def center_crop_window(shape, image_size):
  """(offset_y, offset_x, crop, crop): the eval crop for an image of `shape` [H, W, ...]."""
  height, width = shape[0], shape[1]
  ratio = tf.constant(image_size / (image_size + CROP_PADDING), tf.float32)
  crop = tf.cast(ratio * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  return ((height - crop) + 1) // 2, ((width - crop) + 1) // 2, crop, crop


def eval_pixels(encoded, config):
  """Image bytes -> float32 [S, S, 3] on the 0-255 scale, cropped and resized, not normalised."""
  if config.small_image:
    return _eval_resize(decode.decode_rgb(encoded), config)
  # The window of `eval_image_pixels`; JPEGs are cropped while they decode (`decode_and_crop`, the
  # reference's), which can move pixels near the window's edge a few levels from the whole image's.
  image = decode.decode_and_crop(encoded,
                                 lambda shape: center_crop_window(shape, config.image_size))
  return _eval_resize(image, config)


def eval_image_pixels(image, config):
  """Decoded pixels [H, W, 3] (any size) -> what `eval_pixels` gives for their lossless
  encoding: the eval path of a model served on pixels rather than on image bytes."""
  if not config.small_image:
    y, x, height, width = center_crop_window(tf.shape(image), config.image_size)
    image = image[y:y + height, x:x + width]
  return _eval_resize(image, config)


def _eval_resize(image, config):
  """The eval path after decoding and cropping: to float32 [S, S, 3]."""
  size = config.image_size
  image = _resize_if_needed(image, size) if config.small_image else resize_bicubic(image, size)
  return tf.cast(tf.ensure_shape(image, [size, size, 3]), tf.float32)


def eval_transform(encoded, config):
  """Image bytes -> normalised float32 [S, S, 3]; deterministic (eval and predict)."""
  return normalize(eval_pixels(encoded, config), config)


def small_image_padding(image_size):
  """Pixels of reflect padding on each side before pad-and-crop's random crop: the reference's 4
  at 32 px, in proportion at other sizes (as RandAugment's translate and Cutout constants): a
  fixed 4 would shift a 96 px image a third as much, and a 16 px one twice as much."""
  return max(1, image_size // 8)


def train_transform(encoded, seed, config):
  """Image bytes -> augmented, normalised float32 [S, S, 3].

  Args:
    encoded: scalar string tensor (PNG, JPEG, GIF or BMP).
    seed: shape [2] int32/int64 tensor; the output is a function of (encoded, seed, config).
    config: a `PreprocessConfig`.
  """
  if not config.augment:
    return eval_transform(encoded, config)
  crop_seed, flip_seed, augment_seed, cutout_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=4))
  size = config.image_size
  if config.small_image:
    image = _resize_if_needed(decode.decode_rgb(encoded), size)
    image = _augment(image, augment_seed, cutout_seed, config)
    pad = small_image_padding(size)
    padding = [[pad, pad], [pad, pad], [0, 0]]
    image = tf.pad(image, padding, mode="REFLECT")
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
    if config.flip:
      image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  else:
    image = decode.decode_and_crop(encoded, lambda shape: _inception_crop_window(shape, crop_seed,
                                                                                 size))
    image = resize_bicubic(image, size)
    if config.flip:
      image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    image = _augment(image, augment_seed, cutout_seed, config)
  return normalize(tf.ensure_shape(image, [size, size, 3]), config)


def _inception_crop_window(shape, seed, image_size):
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  # The sampler returns the whole image when all 10 attempts fail; the reference then uses the
  # eval center crop rather than training on a squashed full image.
  whole = tf.reduce_all(tf.equal(crop_size[:2], shape[:2]))
  sampled = (begin[0], begin[1], crop_size[0], crop_size[1])
  return tf.cond(whole, lambda: center_crop_window(shape, image_size), lambda: sampled)


def _resize_if_needed(image, size):
  same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
  return tf.cond(same, lambda: tf.cast(image, tf.float32), lambda: resize_bicubic(image, size))


def _augment(image, augment_seed, cutout_seed, config):
  """[RandAugment] and [Cutout] on uint8, as the reference does; float32 in and out."""
  if not config.randaugment_layers and not config.cutout:
    return tf.cast(image, tf.float32)
  # At call time: eval and unaugmented training never need the augmentation module.
  from data import randaugment  # pylint: disable=import-outside-toplevel
  image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
  if config.randaugment_layers:
    image = randaugment.randaugment(image, config.randaugment_layers,
                                    config.randaugment_magnitude, seed=augment_seed,
                                    **_randaugment_constants(config))
  if config.cutout:
    image = randaugment.cutout(image, config.image_size // 4, cutout_seed)
  return tf.cast(image, tf.float32)


def _randaugment_constants(config):
  # The reference's: image_size//8 for the 32x32 recipe, else ImageNet's 100 / 40 pixels at
  # every image size (RandAugment's own default would scale those with the size).
  if config.small_image:
    return {"translate_const": config.image_size // 8, "cutout_const": config.image_size // 8}
  return {"translate_const": 100, "cutout_const": 40}
