"""data.convert: every source to TFRecord shards + manifest, checked by reading the shards back."""

import gzip
import io
import json
import os
import struct
import sys
import types

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from data import convert, pipeline, records

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _read_back(output_dir, split=None):
  """{key: (HxWx3 pixels, label)} of every record, decoded by TensorFlow."""
  out = {}
  for serialized in pipeline.ordered_records(pipeline.resolve_shards(output_dir, split)):
    example = tf.train.Example.FromString(serialized.numpy())
    feature = example.features.feature
    label = feature[records.LABEL].int64_list.value
    pixels = tf.io.decode_image(feature[records.ENCODED].bytes_list.value[0], channels=3,
                                expand_animations=False).numpy()
    out[feature[records.KEY].bytes_list.value[0].decode()] = (pixels, label[0] if label else None)
  return out


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _save(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _image_folder(root, rng):
  """Class folders holding one image per awkward format, plus bad files; returns expectations."""
  rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
  gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
  rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
  frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
  files = {}
  for name, image, fmt, kwargs in (
      ("cat/gray.png", Image.fromarray(gray), "PNG", {}),
      ("cat/rgba.png", Image.fromarray(rgba), "PNG", {}),
      ("cat/deep.png", Image.fromarray(gray.astype(np.uint16) * 257), "PNG", {}),
      ("dog/sub/rgb.bmp", Image.fromarray(rgb), "BMP", {}),
      ("dog/palette.png", frames[0].convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
       "PNG", {}),
      ("dog/anim.gif", frames[0], "GIF", {"save_all": True, "append_images": frames[1:]}),
      ("dog/photo.jpg", Image.fromarray(rgb), "JPEG", {"quality": 90}),
      ("dog/gray.jpg", Image.fromarray(gray), "JPEG", {})):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    files[name] = buffer.getvalue()
  expected = {}
  for name, data in files.items():
    _save(os.path.join(root, name), data)
    with Image.open(io.BytesIO(data)) as image:
      expected[name] = np.asarray(image.convert("RGB"))
  _save(os.path.join(root, "cat/truncated.png"), _png(rgb)[:60])
  _save(os.path.join(root, "dog/garbage.jpg"), rng.bytes(500))
  _save(os.path.join(root, "stray.png"), _png(gray))
  _save(os.path.join(root, "dog/.hidden.png"), b"not an image")
  return expected


def test_convert_folder_decodes_every_format_and_lists_bad_files(tmp_path):
  expected = _image_folder(str(tmp_path / "in"), np.random.default_rng(0))
  manifest = convert.convert("folder", str(tmp_path / "in"), str(tmp_path / "out"), split="train",
                             num_shards=3, num_workers=2)
  entry = manifest["splits"]["train"]
  assert manifest["class_names"] == ["cat", "dog"]
  skipped = {s["key"]: s["reason"] for s in entry["skipped"]}
  assert set(skipped) == {"train/cat/truncated.png", "train/dog/garbage.jpg", "train/stray.png"}
  assert all(skipped.values())
  assert entry["num_skipped"] == 3 and entry["num_examples"] == len(expected)
  assert entry["class_counts"] == [3, 5] and entry["image_size"] is None
  got = _read_back(str(tmp_path / "out"))
  assert set(got) == {f"train/{name}" for name in expected}
  for name, pixels in expected.items():
    decoded, label = got[f"train/{name}"]
    assert label == (0 if name.startswith("cat") else 1)
    assert decoded.shape == pixels.shape[:2] + (3,)
    # TF's and PIL's JPEG decoders round differently (up to ~5 levels on noise); the rest is exact.
    tolerance = 8 if name.endswith(".jpg") else 0
    assert np.abs(decoded.astype(int) - pixels).max() <= tolerance, name
  assert sorted(os.listdir(tmp_path / "out")) == ["manifest.json"] + [
      records.shard_name("train", i, 3) for i in range(3)]


def test_convert_folder_unlabeled_tree_keys_relative_paths(tmp_path):
  rng = np.random.default_rng(1)
  for name in ("a.png", "x/b.png", "x/y/c.png"):
    _save(str(tmp_path / "in" / name), _png(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)))
  manifest = convert.convert("folder", str(tmp_path / "in"), str(tmp_path / "out"),
                             split="extra", num_shards=2, unlabeled=True)
  assert not manifest["splits"]["extra"]["labeled"] and manifest["class_names"] == []
  assert manifest["splits"]["extra"]["image_size"] == [5, 6]
  got = _read_back(str(tmp_path / "out"))
  assert set(got) == {"extra/a.png", "extra/x/b.png", "extra/x/y/c.png"}
  assert all(label is None for _, label in got.values())


def test_convert_empty_input_directory_names_it_and_writes_nothing(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=str(tmp_path / "empty")):
    convert.convert("folder", str(tmp_path / "empty"), str(tmp_path / "out"), split="train",
                    num_shards=1)
  assert not (tmp_path / "out").exists()


def test_a_folder_of_images_read_as_idx_or_without_class_folders_names_the_flag_to_set(tmp_path):
  """--source defaults to idx: a folder of images gets the flag that reads it; a flat folder read
  as labeled gets the flag for an unlabeled tree (not the Python keyword)."""
  rng = np.random.default_rng(2)
  for name in ("cat/a.png", "dog/b.png"):
    _save(str(tmp_path / "classes" / name), _png(rng.integers(0, 256, (4, 4, 3), np.uint8)))
  _save(str(tmp_path / "flat" / "c.png"), _png(rng.integers(0, 256, (4, 4, 3), np.uint8)))
  with pytest.raises(FileNotFoundError) as error:
    convert.convert("idx", str(tmp_path / "classes"), str(tmp_path / "out"), split="train",
                    num_shards=1)
  assert str(error.value) == (
      f"--source=idx (the default) reads MNIST-layout IDX files and {tmp_path / 'classes'} has "
      "no train-images-idx3-ubyte[.gz]; for a folder of images (one sub-folder per class, or "
      "any tree with --unlabeled) use --source=folder")
  with pytest.raises(ValueError) as error:
    convert.convert("folder", str(tmp_path / "flat"), str(tmp_path / "out"), split="train",
                    num_shards=1)
  assert str(error.value).endswith("or convert a plain tree of images with --unlabeled")
  assert "=True" not in str(error.value) and not (tmp_path / "out").exists()
  # An IDX directory that lacks one file is told which, without the folder hint.
  (tmp_path / "idx").mkdir()
  (tmp_path / "idx" / "train-labels-idx1-ubyte").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"has no train-images-idx3-ubyte\[\.gz\]$"):
    convert.convert("idx", str(tmp_path / "idx"), str(tmp_path / "out"), split="train",
                    num_shards=1)


def test_convert_svhn_mat_maps_label_10_to_digit_0(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
  labels = np.array([[10], [1], [2], [10], [9], [5]], np.uint8)
  scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": images, "y": labels})
  manifest = convert.convert("svhn_mat", str(tmp_path / "train_32x32.mat"), str(tmp_path / "out"),
                             split="train", num_shards=2)
  assert manifest["class_names"] == [str(d) for d in range(10)]
  assert manifest["splits"]["train"]["class_counts"] == [2, 1, 1, 0, 0, 1, 0, 0, 0, 1]
  got = _read_back(str(tmp_path / "out"))
  for i in range(6):
    pixels, label = got[f"train/{i}"]
    assert label == labels[i, 0] % 10
    np.testing.assert_array_equal(pixels, images[..., i])


def test_convert_npz_with_and_without_labels(tmp_path):
  rng = np.random.default_rng(3)
  gray = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
  np.savez(tmp_path / "a.npz", images=gray, labels=np.array([2, 0, 1, 2, 2]),
           class_names=np.array(["x", "y", "z"]))
  np.savez(tmp_path / "b.npz", images=rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8))
  manifest = convert.convert("npz", str(tmp_path / "a.npz"), str(tmp_path / "out"),
                             split="train", num_shards=2)
  assert manifest["class_names"] == ["x", "y", "z"]
  entry = manifest["splits"]["train"]
  assert entry["class_counts"] == [1, 1, 3] and entry["image_size"] == [6, 4]
  values = gray.astype(np.float64)
  np.testing.assert_allclose(entry["mean"], [values.mean()] * 3, atol=1e-5)
  np.testing.assert_allclose(entry["std"], [values.std()] * 3, atol=1e-5)
  got = _read_back(str(tmp_path / "out"), "train")
  for i in range(5):
    np.testing.assert_array_equal(got[f"train/{i}"][0], np.repeat(gray[i, ..., None], 3, -1))
  manifest = convert.convert("npz", str(tmp_path / "b.npz"), str(tmp_path / "out"),
                             split="unlabeled", num_shards=1)
  assert set(manifest["splits"]) == {"train", "unlabeled"}
  assert not manifest["splits"]["unlabeled"]["labeled"]
  assert manifest["class_names"] == ["x", "y", "z"]


def test_convert_tfds_reads_encoded_images_and_class_names(tmp_path, monkeypatch):
  rng = np.random.default_rng(4)
  rows = [{"image": _png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)), "label": i % 2}
          for i in range(5)]
  builder = types.SimpleNamespace(
      download_and_prepare=lambda: None,
      as_dataset=lambda split, decoders: rows,
      info=types.SimpleNamespace(features={"label": types.SimpleNamespace(names=["a", "b"])}))
  fake = types.SimpleNamespace(builder=lambda name: builder, as_numpy=lambda ds: ds,
                               decode=types.SimpleNamespace(SkipDecoding=lambda: None))
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  manifest = convert.convert("tfds", "fake", str(tmp_path / "out"), split="train", num_shards=1)
  assert manifest["class_names"] == ["a", "b"]
  assert manifest["splits"]["train"]["class_counts"] == [3, 2]
  assert manifest["splits"]["train"]["source"] == {"type": "tfds", "name": "fake"}


def test_convert_tfds_without_the_package_says_so(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="tensorflow-datasets"):
    convert.convert("tfds", "mnist", str(tmp_path / "out"), split="train", num_shards=1)


def test_convert_shuffle_is_seeded_and_reconversion_removes_stale_shards(tmp_path):
  np.savez(tmp_path / "a.npz", images=np.arange(40, dtype=np.uint8).reshape(10, 2, 2),
           labels=np.arange(10) % 3)
  shard_keys = []
  for out in ("one", "two"):
    convert.convert("npz", str(tmp_path / "a.npz"), str(tmp_path / out), split="train",
                    num_shards=3, seed=7)
    shard_keys.append([list(_read_back(shard)) for shard in
                       pipeline.resolve_shards(str(tmp_path / out / "train-*"))])
  assert shard_keys[0] == shard_keys[1]
  assert sorted(sum(shard_keys[0], [])) == sorted(f"train/{i}" for i in range(10))
  assert sum(shard_keys[0], []) != [f"train/{i}" for i in range(10)]
  manifest = convert.convert("npz", str(tmp_path / "a.npz"), str(tmp_path / "one"),
                             split="train", num_shards=2)
  assert sorted(os.listdir(tmp_path / "one")) == sorted(["manifest.json"] +
                                                        manifest["splits"]["train"]["shards"])
  with open(tmp_path / "one" / "manifest.json") as f:
    assert json.load(f) == manifest


def _read_idx_oracle(path):
  """An independent IDX reader: magic, big-endian dims, then raw uint8."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _check_fashion_mnist(tmp_path, limits):
  out = str(tmp_path / "fm")
  for split, prefix, limit in (("train", "train", limits[0]), ("test", "t10k", limits[1])):
    manifest = convert.convert("idx", FASHION_MNIST, out, split=split, num_shards=4, limit=limit)
    images = _read_idx_oracle(f"{FASHION_MNIST}/{prefix}-images-idx3-ubyte.gz")[:limit]
    labels = _read_idx_oracle(f"{FASHION_MNIST}/{prefix}-labels-idx1-ubyte.gz")[:limit]
    entry = manifest["splits"][split]
    assert entry["num_examples"] == len(images) and entry["image_size"] == [28, 28]
    assert entry["class_counts"] == np.bincount(labels, minlength=10).tolist()
    rows = pipeline.ordered_records(pipeline.resolve_shards(out, split)).map(
        lambda r: tf.io.parse_single_example(r, {
            records.KEY: tf.io.FixedLenFeature([], tf.string),
            records.LABEL: tf.io.FixedLenFeature([], tf.int64),
            records.ENCODED: tf.io.FixedLenFeature([], tf.string)}))
    rows = rows.map(lambda e: (e[records.KEY], e[records.LABEL],
                               tf.io.decode_png(e[records.ENCODED], channels=3)),
                    num_parallel_calls=tf.data.AUTOTUNE).batch(1000)
    seen = np.zeros(len(images), bool)
    for keys, got_labels, pixels in rows.as_numpy_iterator():
      index = np.array([int(k.decode().split("/")[1]) for k in keys])
      assert not seen[index].any()
      seen[index] = True
      np.testing.assert_array_equal(got_labels, labels[index])
      np.testing.assert_array_equal(pixels, np.repeat(images[index][..., None], 3, -1))
    assert seen.all()
  assert manifest["class_names"] == [str(i) for i in range(10)]


def test_convert_fashion_mnist_first_2000_round_trips(tmp_path):
  _check_fashion_mnist(tmp_path, (2000, 500))


@pytest.mark.slow
def test_convert_fashion_mnist_full_round_trips(tmp_path):
  _check_fashion_mnist(tmp_path, (None, None))


def _jpeg(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _reference_example(encoded, label, synset, filename, height, width):
  """One record as tensorflow/tpu's imagenet_to_gcs.py `_convert_to_example` writes it."""
  def b(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

  def i(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

  feature = {"image/height": i(height), "image/width": i(width), "image/colorspace": b(b"RGB"),
             "image/channels": i(3), "image/class/synset": b(synset.encode()),
             "image/format": b(b"JPEG"), "image/filename": b(filename.encode()),
             "image/encoded": b(encoded)}
  if label is not None:
    feature["image/class/label"] = i(label)
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _reference_shards(directory, prefix, rows, num_shards):
  """Writes `rows` (encoded, 1-based label, synset, filename, h, w) round-robin into
  `<prefix>-SSSSS-of-NNNNN` files, the reference's names."""
  os.makedirs(directory, exist_ok=True)
  for shard in range(num_shards):
    path = os.path.join(directory, f"{prefix}-{shard:05d}-of-{num_shards:05d}")
    with tf.io.TFRecordWriter(path) as writer:
      for row in rows[shard::num_shards]:
        writer.write(_reference_example(*row))


def test_convert_reference_imagenet_tfrecords_maps_1_based_labels(tmp_path):
  """imagenet_to_gcs.py shards: JPEG bytes kept as they are, label 1..C becomes 0..C-1, synsets
  name the classes, filenames make the keys, and the manifest says so."""
  rng = np.random.default_rng(3)
  synsets = ["n01440764", "n01443537", "n01484850"]
  rows, expected = [], {}
  for n in range(8):
    h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
    encoded = _jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    label = n % 3 + 1
    name = f"{synsets[label - 1]}_{n}.JPEG"
    rows.append((encoded, label, synsets[label - 1], name, h, w))
    expected[f"train/{name}"] = (encoded, label - 1)
  _reference_shards(tmp_path / "ref", "train", rows, 3)
  _reference_shards(tmp_path / "ref", "validation", rows[:2], 1)  # not read for split train
  manifest = convert.convert("tfrecord", str(tmp_path / "ref"), str(tmp_path / "out"),
                             split="train", num_shards=2)
  assert manifest["class_names"] == synsets and manifest["num_classes"] == 3
  entry = manifest["splits"]["train"]
  assert entry["source"]["label_offset"] == 1 and entry["class_counts"] == [3, 3, 2]
  found = {}
  for serialized in pipeline.ordered_records(pipeline.resolve_shards(str(tmp_path / "out"))):
    feature = tf.train.Example.FromString(serialized.numpy()).features.feature
    found[feature[records.KEY].bytes_list.value[0].decode()] = (
        feature[records.ENCODED].bytes_list.value[0], feature[records.LABEL].int64_list.value[0])
  assert found == expected


def test_convert_reference_tfrecords_unlabeled_glob_and_bad_labels(tmp_path):
  rng = np.random.default_rng(4)
  encoded = _jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
  _reference_shards(tmp_path / "ref", "train", [(encoded, None, "", f"u{n}.JPEG", 16, 16)
                                                for n in range(3)], 1)
  manifest = convert.convert("tfrecord", str(tmp_path / "ref" / "train-*"),
                             str(tmp_path / "unl"), split="unlabeled", num_shards=1,
                             unlabeled=True)
  assert manifest["splits"]["unlabeled"]["num_examples"] == 3
  assert not manifest["splits"]["unlabeled"]["labeled"]
  with pytest.raises(ValueError, match="no image/class/label; pass --unlabeled"):
    convert.convert("tfrecord", str(tmp_path / "ref"), str(tmp_path / "a"), split="train",
                    num_shards=1)
  _reference_shards(tmp_path / "zero", "train", [(encoded, 0, "x", "z.JPEG", 16, 16)], 1)
  with pytest.raises(ValueError, match="image/class/label 0; the reference's shards"):
    convert.convert("tfrecord", str(tmp_path / "zero"), str(tmp_path / "b"), split="train",
                    num_shards=1)
  with pytest.raises(FileNotFoundError, match="no validation-\\* shards"):
    convert.convert("tfrecord", str(tmp_path / "zero"), str(tmp_path / "c"), split="validation",
                    num_shards=1)
  assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))
