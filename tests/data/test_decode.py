"""data/decode.py: image bytes to pixels and back, against PIL's decoding of the same bytes."""

import io

import numpy as np
import pytest
from PIL import Image

from data import decode


def _pil_rgb(data):
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))


def _saved(image, fmt, **options):
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **options)
  return buffer.getvalue()


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7), (5, 7, 1), (5, 7, 4), (1, 1, 3)])
def test_encode_png_is_read_by_pil_as_the_same_pixels(shape):
  pixels = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
  png = decode.encode_png(pixels)
  # Restated: gray is replicated to three channels, alpha dropped.
  gray = pixels.ndim == 2 or pixels.shape[-1] == 1
  expected = np.repeat(pixels.reshape(shape[:2] + (1,)), 3, axis=2) if gray else pixels[..., :3]
  np.testing.assert_array_equal(_pil_rgb(png), expected)
  np.testing.assert_array_equal(decode.decode_rgb(png).numpy(), expected)


def test_encode_png_refuses_other_dtypes_and_shapes():
  with pytest.raises(ValueError, match="must be uint8, got float32"):
    decode.encode_png(np.zeros((2, 2, 3), np.float32))
  with pytest.raises(ValueError, match=r"cannot store an image of shape \(2, 2, 2\)"):
    decode.encode_png(np.zeros((2, 2, 2), np.uint8))


def test_load_image_bytes_keeps_what_tensorflow_decodes_alike_and_re_encodes_the_rest():
  rng = np.random.default_rng(1)
  rgb = Image.fromarray(rng.integers(0, 256, (6, 9, 3), np.uint8))
  palette = rgb.convert("P")
  for kept in (_saved(rgb, "PNG"), _saved(palette, "PNG"), _saved(rgb, "JPEG", quality=90)):
    pixels, encoded = decode.load_image_bytes(kept)
    assert encoded is kept
    np.testing.assert_array_equal(pixels, _pil_rgb(kept))
  for other in (_saved(rgb, "BMP"), _saved(rgb, "GIF"),
                _saved(Image.fromarray(rng.integers(0, 65535, (4, 4), np.uint16)), "PNG")):
    pixels, encoded = decode.load_image_bytes(other)
    assert encoded != other and encoded.startswith(b"\x89PNG")
    np.testing.assert_array_equal(pixels, _pil_rgb(other))
    np.testing.assert_array_equal(_pil_rgb(encoded), pixels)


def test_truncated_and_non_image_bytes_are_undecodable():
  jpeg = _saved(Image.fromarray(np.full((16, 16, 3), 90, np.uint8)), "JPEG")
  for data in (jpeg[:-40], b"not an image", b""):
    with pytest.raises(decode.UndecodableImage):
      decode.load_image_bytes(data)


def test_decode_and_crop_takes_the_window_of_a_jpeg_and_of_a_png_as_pil_decodes_them():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Smooth: on pixel noise the two decoders' chroma upsampling differs by more than rounding.
  rows, cols = np.mgrid[0:20, 0:24]
  pixels = np.stack([rows * 12, cols * 10, rows * 5 + cols * 5], -1).astype(np.uint8)
  image = Image.fromarray(pixels)
  window = lambda shape: (tf.constant(3), tf.constant(5), tf.constant(10), tf.constant(12))
  for data in (_saved(image, "PNG"), _saved(image, "JPEG", quality=90)):
    crop = decode.decode_and_crop(tf.constant(data), window).numpy()
    want = _pil_rgb(data)[3:13, 5:17].astype(int)
    # TensorFlow's default (fast) inverse DCT and PIL's differ by a few levels (module
    # docstring): seen up to 3 on this image at quality 90, 5 at quality 95.
    assert np.abs(crop.astype(int) - want).max() <= (0 if data.startswith(b"\x89PNG") else 5)
