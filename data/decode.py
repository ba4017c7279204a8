"""Image bytes <-> HxWx3 uint8 pixels: PIL on the converter side, TensorFlow in the readers.

Both sides agree on every input the converter keeps as-is (8-bit PNG in RGB, RGBA, L, LA or P
exactly; JPEG in RGB or L up to the decoders' rounding, a few levels): grayscale is replicated
to three channels, alpha is dropped (not composited), palettes are expanded. Anything else (GIF,
BMP, TIFF, WebP, CMYK JPEG, 16-bit PNG, ...) is decoded by PIL and re-encoded as PNG, so shards
only ever hold PNG or JPEG.
"""

import io
import struct
import zlib

import numpy as np
import tensorflow as tf
from PIL import Image

# (format, mode) pairs whose bytes TensorFlow decodes like PIL's convert("RGB") (module docstring).
_KEEP_AS_IS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"),
               ("PNG", "LA"), ("PNG", "P")}


class UndecodableImage(ValueError):
  """The bytes are not an image PIL can read completely."""


def load_image_bytes(data):
  """Decodes image file bytes with PIL.

  GIFs and other multi-frame files give their first frame. Truncated files are errors (PIL's
  `LOAD_TRUNCATED_IMAGES` is left off on purpose).

  Args:
    data: the file's bytes.

  Returns:
    (pixels, encoded): pixels an HxWx3 uint8 array; encoded the bytes to store, which are `data`
    itself when TensorFlow decodes them to the same pixels, else a PNG of `pixels`.

  Raises:
    UndecodableImage: for anything PIL cannot decode completely.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.seek(0)
      image.load()
      keep = (image.format, image.mode) in _KEEP_AS_IS and not _is_16_bit_png(data)
      pixels = np.asarray(image.convert("RGB"))
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
    raise UndecodableImage(f"{type(e).__name__}: {e}") from e
  if pixels.size == 0:
    raise UndecodableImage("empty image")
  return pixels, (data if keep else encode_png(pixels))


def _is_16_bit_png(data):
  # IHDR is always the first chunk; its bit-depth byte sits at offset 24.
  return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] > 8


def encode_png(pixels):
  """PNG bytes of a uint8 array shaped HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped).

  Written directly (8-bit gray or RGB, no row filters) rather than through PIL, whose per-call
  overhead is ~10x the compression itself on 32x32 images; zlib releases the GIL, so
  conversion threads run in parallel.
  """
  pixels = np.asarray(pixels)
  if pixels.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {pixels.dtype}")
  if pixels.ndim == 3 and pixels.shape[-1] in (1, 4):
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., :3]
  if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3) or not pixels.size:
    raise ValueError(f"cannot store an image of shape {pixels.shape}")
  height, width = pixels.shape[:2]
  rows = np.zeros((height, 1 + pixels[0].size), np.uint8)  # column 0: filter type 0 (none)
  rows[:, 1:] = pixels.reshape(height, -1)
  header = struct.pack(">IIBBBBB", width, height, 8, 0 if pixels.ndim == 2 else 2, 0, 0, 0)
  return b"".join([b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                   _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)), _png_chunk(b"IEND", b"")])


def _png_chunk(kind, data):
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decode_rgb(encoded):
  """TF: PNG/JPEG/GIF (first frame)/BMP bytes -> [H, W, 3] uint8 tensor."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def decode_and_crop(encoded, window_fn):
  """TF: decodes only the window `window_fn` picks, the way the reference crops JPEGs.

  JPEGs are cropped during decoding (`decode_and_crop_jpeg`, much cheaper for large images);
  other formats are decoded whole and sliced.

  Args:
    encoded: scalar string tensor of image bytes.
    window_fn: maps the image shape ([3] int32: height, width, channels) to
      (offset_y, offset_x, height, width) scalar int32 tensors.

  Returns:
    [height, width, 3] uint8 tensor.
  """
  def crop_jpeg():
    y, x, h, w = window_fn(tf.image.extract_jpeg_shape(encoded))
    return tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3)

  def crop_other():
    image = decode_rgb(encoded)
    y, x, h, w = window_fn(tf.shape(image))
    return image[y:y + h, x:x + w]

  image = tf.cond(tf.io.is_jpeg(encoded), crop_jpeg, crop_other)
  image.set_shape([None, None, 3])
  return image
