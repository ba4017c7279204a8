"""Common corruptions (ImageNet-C, CIFAR-10-C) and perturbation sequences (ImageNet-P, CIFAR-10-P).

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), re-stated as TensorFlow ops so that corrupted copies of any evaluation
set are made on the fly inside `tf.data`, deterministically given a seed, instead of downloaded.
The released ImageNet-C and ImageNet-P files themselves are read by `data.released_sets`.

Every function takes uint8 images, one `[H, W, 3]` or a batch `[B, H, W, 3]`, and returns uint8 of
the same shape (perturbations add a frame axis). Randomness comes only from stateless ops: `seed` is
an int or a shape-[2] integer tensor (e.g. `tf.stack([seed, index])` for per-element seeds in
`tf.data`). A batch is corrupted with one seed, each image with its own draws, so the output for an
image depends on the seed and on its position in the batch.

Severity parameters are the reference's, row by row (`SEVERITY_TABLES`): `"cifar10-c"` (default; the
32 px parameters of CIFAR-10-C, which suit the 28-32 px images this project trains on) or
`"imagenet-c"` (the 224 px ImageNet-C parameters). Differences from the reference, all deliberate:
- Results are rounded to uint8, where the reference truncates (`np.uint8`): truncation shifts every
  image 0.5 levels darker, which would count as a corruption of its own.
- fog: the diamond-square plasma fractal becomes a seeded multi-octave value noise with the same
  octave-to-octave amplitude ratio (1 / wibbledecay**2: the reference displaces by
  `wibble * U(-wibble, wibble)` and divides wibble by wibbledecay per octave), normalised to [0, 1]
  like the reference's map and generated at the next power of two >= the image side (32 for CIFAR,
  256 for ImageNet, as there).
- fog, pixelate and zoom_blur need a static image height and width (the others do not).
- Not implemented: glass_blur, snow, frost, elastic_transform (and the extra speckle_noise,
  gaussian_blur, spatter, saturate). A mean over this subset is not comparable with published
  15-corruption mCE numbers; compare models evaluated here with each other.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_TABLE = "cifar10-c"

# Columns are severities 1-5, images scaled to [0, 1]. Source: hendrycks/robustness,
# ImageNet-C/create_c/make_cifar_c.py (CIFAR-10-C) and ImageNet-C/create_c/make_imagenet_c.py
# (ImageNet-C; ImageNet-C/imagenet_c/imagenet_c/corruptions.py, the pip package, has the same).
#   gaussian_noise    noise std
#   shot_noise        Poisson rate per unit intensity: x -> Poisson(x * c) / c
#   impulse_noise     fraction of values set to 0 or 1 (skimage "s&p", salt:pepper 1:1)
#   defocus_blur      (disk radius in px, sigma of the anti-aliasing Gaussian)
#   motion_blur       (ImageMagick MotionBlurImage radius, sigma); angle ~ U(-45, 45) degrees
#   zoom_blur         zoom factors np.arange(start, stop, step), averaged with the image
#   contrast          factor applied to the deviation from each channel's mean
#   brightness        added to HSV value
#   fog               (fractal strength, wibbledecay)
#   pixelate          side of the downsampled image relative to the original
#   jpeg_compression  JPEG quality
CIFAR10_C = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01),
                  (1, 1.26, 0.01)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}
IMAGENET_C = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02),
                  (1, 1.31, 0.03)),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
}
SEVERITY_TABLES = {"cifar10-c": CIFAR10_C, "imagenet-c": IMAGENET_C}


def _as_seed(seed):
  seed = tf.convert_to_tensor(seed)
  if not seed.dtype.is_integer:
    raise TypeError(f"seed must be an int or an integer tensor of shape [2], got {seed.dtype}")
  seed = tf.cast(seed, tf.int64)
  if seed.shape.rank == 0:
    return tf.stack([seed, tf.zeros_like(seed)])
  if seed.shape != (2,):
    raise ValueError(f"seed must be an int or have shape [2], got shape {seed.shape}")
  return seed


def _split(seed, num):
  return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def _pad_indices(size, pad, border):
  index = tf.range(-pad, size + pad)
  if border == "edge":
    return tf.clip_by_value(index, 0, size - 1)
  # Reflect-101 (OpenCV's default border, which cv2.filter2D used), for pads wider than the image.
  period = tf.maximum(2 * (size - 1), 1)
  index = tf.math.floormod(index, period)
  return tf.where(index >= size, period - index, index)


def _pad(x, pad, border):
  shape = tf.shape(x)
  x = tf.gather(x, _pad_indices(shape[1], pad, border), axis=1)
  return tf.gather(x, _pad_indices(shape[2], pad, border), axis=2)


# ---- Corruptions: x is float32 [B, H, W, 3] in [0, 1], c one severity's table entry. ------------

def _gaussian_noise(x, c, seed):
  return x + c * tf.random.stateless_normal(tf.shape(x), seed)


def _shot_noise(x, c, seed):
  return tf.random.stateless_poisson(tf.shape(x), seed, lam=x * c, dtype=tf.float32) / c


def _impulse_noise(x, c, seed):
  flip_seed, salt_seed = _split(seed, 2)
  flipped = tf.random.stateless_uniform(tf.shape(x), flip_seed) < c
  salt = tf.random.stateless_uniform(tf.shape(x), salt_seed) < 0.5
  return tf.where(flipped, tf.cast(salt, x.dtype), x)


def _gaussian_kernel_1d(size, sigma):
  offsets = np.arange(size) - (size - 1) / 2
  kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
  return kernel / kernel.sum()


def _disk_kernel(radius, alias_blur):
  """The reference's anti-aliased disk: a normalised disk, smoothed by cv2.GaussianBlur.

  Re-stated in NumPy (17x17 grid and 3x3 smoothing up to radius 8, else a (2r+1) grid and 5x5),
  then cropped to its non-zero support so that small radii need little padding.
  """
  half = 8 if radius <= 8 else int(radius)
  offsets = np.arange(-half, half + 1)
  xx, yy = np.meshgrid(offsets, offsets)
  disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
  disk /= disk.sum()
  size = 3 if radius <= 8 else 5
  smooth = np.outer(*[_gaussian_kernel_1d(size, alias_blur)] * 2)
  padded = np.pad(disk, size // 2, mode="reflect")
  kernel = sum(smooth[i, j] * padded[i:i + disk.shape[0], j:j + disk.shape[1]]
               for i in range(size) for j in range(size))
  support = half - np.flatnonzero(kernel.sum(axis=0)).min()
  return kernel[half - support:half + support + 1, half - support:half + support + 1]


def _defocus_blur(x, c, seed):
  del seed
  kernel = _disk_kernel(*c)
  pad = kernel.shape[0] // 2
  filters = tf.constant(np.tile(kernel[:, :, None, None], (1, 1, x.shape[-1], 1)), tf.float32)
  return tf.nn.depthwise_conv2d(_pad(x, pad, "reflect"), filters, [1, 1, 1, 1], "VALID")


def _motion_blur(x, c, seed):
  # ImageMagick's MotionBlurImage: a one-sided line of taps, 2*ceil(radius)+1 long, weighted by
  # exp(-i^2 / 2 sigma^2), reading pixel x + round(i * (cos a, sin a)) with edge pixels repeated.
  # Each image has its own angle, so the (sparse, per-image) kernel is applied as shifted copies.
  radius, sigma = c
  width = 2 * math.ceil(radius) + 1
  taps = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
  taps /= taps.sum()
  shape = tf.shape(x)
  angle = tf.random.stateless_uniform(shape[:1], seed, -45.0, 45.0) * (math.pi / 180)
  steps = tf.range(width, dtype=tf.float32)[None, :]
  dx = tf.cast(tf.math.ceil(steps * tf.cos(angle)[:, None] - 0.5), tf.int32)
  dy = tf.cast(tf.math.ceil(steps * tf.sin(angle)[:, None] - 0.5), tf.int32)
  rows, cols = tf.range(shape[1])[None, :], tf.range(shape[2])[None, :]
  taps = tf.constant(taps, tf.float32)

  def add_tap(i, out):
    shifted = tf.gather(x, tf.clip_by_value(rows + dy[:, i:i + 1], 0, shape[1] - 1), axis=1,
                        batch_dims=1)
    shifted = tf.gather(shifted, tf.clip_by_value(cols + dx[:, i:i + 1], 0, shape[2] - 1), axis=2,
                        batch_dims=1)
    return i + 1, out + taps[i] * shifted

  # A graph loop, not a Python one: ImageNet-C's widest line has 41 taps, each a few ops to trace.
  return tf.while_loop(lambda i, _: i < width, add_tap, (0, tf.zeros_like(x)))[1]


def _zoom_matrix(size, zoom):
  """The reference's clipped_zoom along one axis as a [size, size] matrix.

  clipped_zoom crops the centre ceil(size / zoom) pixels, zooms them with scipy.ndimage.zoom
  (order=1: linear interpolation on a corner-aligned grid) to round(crop * zoom) and trims the
  centre back to `size`; all of it is linear and separable, so rows and columns each get a matrix.
  """
  crop = math.ceil(size / zoom)
  start = (size - crop) // 2
  zoomed = round(crop * zoom)
  trim = (zoomed - size) // 2
  scale = (crop - 1) / (zoomed - 1) if zoomed > 1 else 0.0
  matrix = np.zeros((size, size))
  for i in range(size):
    position = (i + trim) * scale
    low = min(int(position), crop - 1)
    fraction = position - low
    matrix[i, start + low] += 1 - fraction
    if fraction > 0:
      matrix[i, start + low + 1] += fraction
  return matrix


def _zoom_blur(x, c, seed):
  del seed
  height, width = _static_size(x, "zoom_blur")
  # The mean of the image and its zoomed copies: one matrix pair per copy, the identity first.
  zooms = np.arange(*c)
  rows = np.stack([np.eye(height)] + [_zoom_matrix(height, z) for z in zooms])
  cols = np.stack([np.eye(width)] + [_zoom_matrix(width, z) for z in zooms])
  out = tf.einsum("zih,bhwc,zjw->bijc", tf.constant(rows, tf.float32), x,
                  tf.constant(cols, tf.float32))
  return out / len(rows)


def _contrast(x, c, seed):
  del seed
  means = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
  return (x - means) * c + means


def _brightness(x, c, seed):
  del seed
  hsv = tf.image.rgb_to_hsv(x)
  value = tf.clip_by_value(hsv[..., 2:] + c, 0.0, 1.0)
  return tf.image.hsv_to_rgb(tf.concat([hsv[..., :2], value], axis=-1))


def _plasma(batch, height, width, wibbledecay, seed):
  """Low-frequency noise in [0, 1], [B, height, width, 1]; see the module docstring."""
  size = 1 << max(0, math.ceil(math.log2(max(height, width))))
  octaves = max(1, int(math.log2(size)))
  total = 0.0
  for octave, octave_seed in enumerate(_split(seed, octaves)):
    cells = 2 ** (octave + 1)
    grid = tf.random.stateless_uniform([batch, cells + 1, cells + 1, 1], octave_seed, -1.0, 1.0)
    grid = tf.raw_ops.ResizeBilinear(images=grid, size=[size + 1, size + 1], align_corners=True)
    total += wibbledecay ** (-2.0 * octave) * grid[:, :height, :width]
  low = tf.reduce_min(total, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(total, axis=[1, 2, 3], keepdims=True)
  return (total - low) / tf.maximum(high - low, 1e-12)


def _static_size(x, name):
  height, width = x.shape[1], x.shape[2]
  if height is None or width is None:
    raise ValueError(f"{name} needs images with a static height and width (resize them first)")
  return height, width


def _fog(x, c, seed):
  strength, wibbledecay = c
  height, width = _static_size(x, "fog")
  fog = _plasma(tf.shape(x)[0], height, width, wibbledecay, seed)
  max_value = tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)
  return (x + strength * fog) * max_value / (max_value + strength)


def _box_resize_matrix(in_size, out_size):
  """PIL's BOX resampling along one axis (Resample.c, precompute_coeffs) as an [out, in] matrix.

  BOX is not area averaging: an output pixel is the plain mean of the input pixels whose centres
  fall in its footprint (upsampling: the one nearest pixel).
  """
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = 0.5 * filter_scale
  matrix = np.zeros((out_size, in_size))
  for i in range(out_size):
    centre = (i + 0.5) * scale
    lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
    t = (np.arange(lo, hi) - centre + 0.5) / filter_scale
    weights = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
    matrix[i, lo:hi] = weights / max(weights.sum(), 1.0)
  return tf.constant(matrix, tf.float32)


def _box_resize(x, height, width):
  rows = _box_resize_matrix(x.shape[1], height)
  cols = _box_resize_matrix(x.shape[2], width)
  return tf.einsum("ih,bhwc,jw->bijc", rows, x, cols)


def _pixelate(x, c, seed):
  del seed
  height, width = _static_size(x, "pixelate")
  # The reference resizes a PIL image to int(side * c) and back, with uint8 in between.
  small = _box_resize(x, max(int(height * c), 1), max(int(width * c), 1))
  return _box_resize(tf.round(small * 255.0) / 255.0, height, width)


def _jpeg_compression(x, c, seed):
  del seed
  images = tf.cast(tf.round(x * 255.0), tf.uint8)
  out = tf.map_fn(
      lambda image: tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=c), channels=3),
      images, fn_output_signature=tf.uint8)
  return tf.cast(tf.ensure_shape(out, images.shape), tf.float32) / 255.0


_CORRUPTION_OPS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "fog": _fog,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}


def _float_batch(image):
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f"images must be uint8, got {image.dtype.name}")
  if image.shape.rank not in (3, 4):
    raise ValueError(f"images must be [H, W, 3] or [B, H, W, 3], got shape {image.shape}")
  batched = image.shape.rank == 4
  image = tf.ensure_shape(image, [None] * (image.shape.rank - 1) + [3])
  x = tf.cast(image if batched else image[None], tf.float32) / 255.0
  return x, batched


def _to_uint8(x):
  return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)


def corrupt(image, name, severity, seed, *, table=DEFAULT_TABLE):
  """Applies one corruption at one severity.

  Args:
    image: uint8 `[H, W, 3]` or `[B, H, W, 3]`.
    name: a key of `CORRUPTIONS`.
    severity: a Python int in 1..5 (it picks parameters, so it cannot be a tensor).
    seed: int or shape-[2] integer tensor; the same seed gives the same output.
    table: a key of `SEVERITY_TABLES`.

  Returns:
    uint8 images of the input's shape.
  """
  if name not in _CORRUPTION_OPS:
    raise ValueError(f"unknown corruption {name!r}; known: {', '.join(_CORRUPTION_OPS)}")
  if table not in SEVERITY_TABLES:
    raise ValueError(f"unknown severity table {table!r}; known: {', '.join(SEVERITY_TABLES)}")
  if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
      or severity not in SEVERITIES):
    raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
  x, batched = _float_batch(image)
  out = _to_uint8(_CORRUPTION_OPS[name](x, SEVERITY_TABLES[table][name][severity - 1],
                                        _as_seed(seed)))
  return out if batched else out[0]


def _bind_corruption(name):
  def corruption(image, severity, seed, *, table=DEFAULT_TABLE):
    return corrupt(image, name, severity, seed, table=table)
  corruption.__name__ = name
  corruption.__doc__ = f"`corrupt(image, {name!r}, severity, seed, table=table)`."
  return corruption


# name -> fn(image_uint8, severity, seed, *, table=DEFAULT_TABLE) -> uint8 image(s).
CORRUPTIONS = {name: _bind_corruption(name) for name in _CORRUPTION_OPS}


# ---- Perturbation sequences ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Perturbation:
  """One CIFAR-10-P sequence type.

  Attributes:
    num_frames: frames per sequence in CIFAR-10-P.
    step: change per frame (pixels, degrees, zoom factor, noise std on [0, 1]).
    compare_to: which frame a flip is counted against: "previous" (consecutive frames) or "first"
      (noise sequences: every frame is an independent draw around the clean first frame, so
      ImageNet-P's flip_prob compares each with the first).
  """
  num_frames: int
  step: float
  compare_to: str


# Source: hendrycks/robustness ImageNet-P/create_p/make_cifar_p.py. Geometric sequences are centred
# on the unchanged image: translate i-7 px (i = 0..15), rotate i-15 degrees, scale (70+2i)/100
# (i = 0..30); gaussian_noise is the clean image then 30 draws of std 0.02. Flips follow flip_prob
# in ImageNet-P/test.py at difficulty 1 (a step of one frame).
PERTURBATIONS_TABLE = {
    #                              frames  step  compare_to
    "translate": Perturbation(     16,     1.0,  "previous"),
    "rotate": Perturbation(        31,     1.0,  "previous"),
    "scale": Perturbation(         31,     0.02, "previous"),
    "gaussian_noise": Perturbation(31,     0.02, "first"),
}


def _frame_offsets(num_frames, step):
  return (np.arange(num_frames) - (num_frames - 1) // 2) * step


def _warp_frames(x, rows, interpolation):
  """Applies each of T inverse affine maps (rows [T, 8]) to every image: [B, T, H, W, C]."""
  shape = tf.shape(x)
  num_frames = rows.shape[0]
  images = tf.repeat(x, num_frames, axis=0)
  transforms = tf.tile(rows, [shape[0], 1])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
      interpolation=interpolation, fill_mode="CONSTANT")
  return tf.reshape(out, tf.concat([shape[:1], [num_frames], shape[1:]], axis=0))


def _centre(x):
  size = tf.cast(tf.shape(x)[1:3], tf.float32)
  return (size[1] - 1) / 2, (size[0] - 1) / 2


def _affine_rows(num_frames, a0, a1, a2, b0, b1, b2):
  """[T, 8] rows mapping output (x, y) to input (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
  columns = [tf.broadcast_to(tf.cast(v, tf.float32), [num_frames])
             for v in (a0, a1, a2, b0, b1, b2)]
  return tf.stack(columns + [tf.zeros([num_frames])] * 2, axis=1)


def _translate_frames(x, num_frames, step, seed):
  del seed
  dx = _frame_offsets(num_frames, step)  # content moves right by dx (zero fill)
  return _warp_frames(x, _affine_rows(num_frames, 1, 0, -dx, 0, 1, 0), "NEAREST")


def _rotate_frames(x, num_frames, step, seed):
  del seed
  theta = np.deg2rad(_frame_offsets(num_frames, step))  # counterclockwise as displayed
  cos = tf.constant(np.cos(theta), tf.float32)
  sin = tf.constant(np.sin(theta), tf.float32)
  cx, cy = _centre(x)
  return _warp_frames(
      x, _affine_rows(num_frames, cos, -sin, cx - cos * cx + sin * cy, sin, cos,
                      cy - sin * cx - cos * cy), "BILINEAR")


def _scale_frames(x, num_frames, step, seed):
  del seed
  inverse = 1.0 / (1.0 + _frame_offsets(num_frames, step))  # about the centre, zero fill
  shift = tf.constant(1 - inverse, tf.float32)
  cx, cy = _centre(x)
  rows = _affine_rows(num_frames, inverse, 0, cx * shift, 0, inverse, cy * shift)
  return _warp_frames(x, rows, "BILINEAR")


def _gaussian_noise_frames(x, num_frames, step, seed):
  shape = tf.shape(x)
  noise = tf.random.stateless_normal(
      tf.concat([shape[:1], [num_frames - 1], shape[1:]], axis=0), seed)
  return tf.concat([x[:, None], x[:, None] + step * noise], axis=1)


_PERTURBATION_OPS = {
    "translate": _translate_frames,
    "rotate": _rotate_frames,
    "scale": _scale_frames,
    "gaussian_noise": _gaussian_noise_frames,
}


def perturb(image, name, num_frames=None, seed=0):
  """Makes one perturbation sequence per image.

  Args:
    image: uint8 `[H, W, 3]` or `[B, H, W, 3]`.
    name: a key of `PERTURBATIONS`.
    num_frames: frames per sequence (>= 2); None takes CIFAR-10-P's (`PERTURBATIONS_TABLE`).
    seed: int or shape-[2] integer tensor (used by gaussian_noise only).

  Returns:
    uint8 frames `[T, H, W, 3]` (or `[B, T, H, W, 3]`). Geometric sequences are centred on the
    unchanged image; the gaussian_noise sequence starts with it.
  """
  if name not in _PERTURBATION_OPS:
    raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(_PERTURBATION_OPS)}")
  spec = PERTURBATIONS_TABLE[name]
  num_frames = spec.num_frames if num_frames is None else num_frames
  if not isinstance(num_frames, int) or num_frames < 2:
    raise ValueError(f"num_frames must be an int >= 2, got {num_frames!r}")
  x, batched = _float_batch(image)
  out = _to_uint8(_PERTURBATION_OPS[name](x, num_frames, spec.step, _as_seed(seed)))
  out = tf.ensure_shape(out, [x.shape[0], num_frames] + x.shape[1:].as_list())
  return out if batched else out[0]


def _bind_perturbation(name):
  def perturbation(image, num_frames=None, seed=0):
    return perturb(image, name, num_frames, seed)
  perturbation.__name__ = name
  perturbation.__doc__ = f"`perturb(image, {name!r}, num_frames, seed)`."
  return perturbation


# name -> fn(image_uint8, num_frames, seed) -> uint8 frames [T, H, W, 3] (or [B, T, H, W, 3]).
PERTURBATIONS = {name: _bind_perturbation(name) for name in _PERTURBATION_OPS}
