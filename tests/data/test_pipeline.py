"""data.pipeline: shard resolution, streams, batch layout, worker sharding, damaged input."""

import os

import numpy as np
import pytest
import tensorflow as tf

from data import convert, decode, pipeline, preprocess, records

NUM_CLASSES = 5
CONFIG = preprocess.PreprocessConfig(8, small_image=True, mean=(0.0,) * 3, std=(1.0,) * 3)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """40 8x8 labeled images in 4 shards and 12 test images in 1, one directory."""
  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  for split, count, shards in (("train", 40, 4), ("test", 12, 1)):
    np.savez(root / f"{split}.npz", images=rng.integers(0, 256, (count, 8, 8, 3), np.uint8),
             labels=np.arange(count) % NUM_CLASSES)
    convert.convert("npz", str(root / f"{split}.npz"), str(root / "out"), split=split,
                    num_shards=shards)
  return str(root / "out")


def _keys(dataset):
  return [tf.io.parse_single_example(r, {records.KEY: tf.io.FixedLenFeature([], tf.string)})[
      records.KEY].numpy().decode() for r in dataset]


def test_resolve_shards_reads_the_manifest_or_a_glob_and_explains_failures(converted, tmp_path):
  train = pipeline.resolve_shards(converted, "train")
  assert train == sorted(train) and len(train) == 4
  assert pipeline.resolve_shards(os.path.join(converted, "train-*")) == train
  with pytest.raises(ValueError, match="split"):
    pipeline.resolve_shards(converted)
  with pytest.raises(FileNotFoundError, match="no TFRecord shards"):
    pipeline.resolve_shards(str(tmp_path / "nothing-*"))
  with pytest.raises(FileNotFoundError, match="manifest"):
    pipeline.resolve_shards(str(tmp_path))


def test_labeled_dataset_same_seed_same_batches(converted):
  def batches(seed):
    ds = pipeline.labeled_dataset(converted, CONFIG, batch_size=8, split="train", seed=seed)
    return list(ds.take(6).as_numpy_iterator())

  first, again, other = batches(3), batches(3), batches(4)
  assert first[0][0].shape == (8, 8, 8, 3) and first[0][1].shape == (8, NUM_CLASSES)
  assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
             for a, b in zip(first, again))
  assert not np.array_equal(first[0][0], other[0][0])
  np.testing.assert_array_equal(first[0][1].sum(axis=1), 1.0)


@pytest.mark.parametrize("num_workers", [2, 3, 6])
def test_worker_sharding_gives_disjoint_covering_sets(converted, num_workers):
  # 4 shards: 2 and 3 workers split files, 6 workers split records.
  parts = [_keys(pipeline.train_records(converted, seed=0, split="train", num_workers=num_workers,
                                        worker_index=i, repeat=False))
           for i in range(num_workers)]
  together = sum(parts, [])
  assert len(together) == len(set(together)) == 40
  assert all(parts)


def test_student_dataset_puts_labeled_rows_first():
  labeled = tf.data.Dataset.from_tensors((tf.zeros([4, 4, 3]), tf.constant([1.0, 0.0])))
  pseudo = tf.data.Dataset.from_tensors((tf.ones([4, 4, 3]), tf.constant([0.3, 0.7])))
  batched = pseudo.repeat(7).batch(7)  # batched streams are accepted too
  for unlabeled in (pseudo, batched):
    images, targets = next(iter(pipeline.student_dataset(labeled, unlabeled, 2, 3)))
    assert images.shape == (8, 4, 4, 3) and targets.shape == (8, 2)
    np.testing.assert_array_equal(images.numpy().reshape(8, -1).mean(1), [0] * 2 + [1] * 6)
    np.testing.assert_allclose(targets[:, 1], [0.0] * 2 + [0.7] * 6)
  images, _ = next(iter(pipeline.student_dataset(labeled, None, 2, 3)))
  assert images.shape == (2, 4, 4, 3)
  with pytest.raises(ValueError, match="whole number"):
    pipeline.student_dataset(labeled, pseudo, 3, 0.5)


def test_student_dataset_from_real_streams(converted):
  labeled = pipeline.labeled_dataset(converted, CONFIG, split="train", seed=0)
  pseudo = pipeline.labeled_dataset(converted, CONFIG, split="test", seed=1)
  images, targets = next(iter(pipeline.student_dataset(labeled, pseudo, 4, 2)))
  assert images.shape == (12, 8, 8, 3) and targets.shape == (12, NUM_CLASSES)


def test_eval_and_predict_streams_are_ordered_with_keys(converted):
  shard = pipeline.resolve_shards(converted, "test")[0]
  order = _keys(pipeline.ordered_records([shard]))
  images, labels, keys = [], [], []
  for image, label, key in pipeline.eval_dataset(converted, CONFIG, batch_size=5, split="test",
                                                 with_keys=True):
    images.append(image.numpy())
    labels.extend(label.numpy())
    keys.extend(k.decode() for k in key.numpy())
  assert keys == order and len(images) == 3
  assert labels == [int(k.split("/")[1]) % NUM_CLASSES for k in keys]
  predicted = list(pipeline.predict_dataset([shard], CONFIG).as_numpy_iterator())
  assert [k.decode() for _, k, _ in predicted] == order
  np.testing.assert_array_equal(np.stack([image for _, _, image in predicted]),
                                np.concatenate(images))
  image, label = next(iter(pipeline.eval_dataset(converted, CONFIG, batch_size=5, split="test")))
  assert image.shape == (5, 8, 8, 3) and label.dtype == tf.int32


def test_predict_stream_runs_file_after_file_with_each_images_shard_index(converted):
  shards = pipeline.resolve_shards(converted, "train")
  expected = [(index, key) for index, shard in enumerate(shards)
              for key in _keys(tf.data.TFRecordDataset(shard))]
  # Batches of 7 over shards of 10: most batches span two files.
  got = [(int(index), key.decode())
         for indices, keys, _ in pipeline.predict_dataset(shards, CONFIG, batch_size=7)
         for index, key in zip(indices.numpy(), keys.numpy())]
  assert len(shards) == 4 and got == expected


def _write_shard(path, rows):
  records.write_atomically(path, [records.make_example(**row) for row in rows])


def test_damaged_shard_and_corrupt_image_are_skipped_and_counted(tmp_path):
  png = decode.encode_png(np.zeros((8, 8, 3), np.uint8))
  _write_shard(str(tmp_path / "a-0.tfrecord"),
               [{"key": f"a{i}", "image": png if i != 2 else b"garbage", "label": i % 2}
                for i in range(5)])
  _write_shard(str(tmp_path / "a-1.tfrecord"),
               [{"key": f"b{i}", "image": png, "label": 1} for i in range(5)])
  damaged = tmp_path / "a-1.tfrecord"
  damaged.write_bytes(damaged.read_bytes()[:-30])  # cuts the last record short
  glob = str(tmp_path / "a-*.tfrecord")
  report = pipeline.scan_shards(glob)
  assert report == {"records": 9, "decodable": 8, "damaged_shards": [str(damaged)],
                    "corrupt_keys": ["a2"]}
  evaluated = [k.decode() for _, _, keys in pipeline.eval_dataset(glob, CONFIG, batch_size=4,
                                                                  with_keys=True)
               for k in keys.numpy()]
  assert evaluated == ["a0", "a1", "a3", "a4", "b0", "b1", "b2", "b3"]
  trained = pipeline.labeled_dataset(glob, CONFIG, num_classes=2, seed=0, repeat=False)
  assert sum(1 for _ in trained) == 8


def test_pseudo_labeled_dataset_soft_top_k_and_hard_targets(tmp_path):
  png = decode.encode_png(np.zeros((8, 8, 3), np.uint8))
  _write_shard(str(tmp_path / "p.tfrecord"), [
      {"key": "full", "image": png, "label": 1, "probabilities": [0.2, 0.5, 0.3, 0.0],
       "confidence": 0.5},
      {"key": "topk", "image": png, "label": 3, "top_k_classes": [3, 0],
       "top_k_probabilities": [0.6, 0.2], "confidence": 0.6}])
  expected = {"soft": [[0.2, 0.5, 0.3, 0.0], [0.25, 0.0, 0.0, 0.75]],
              "hard": [[0, 1, 0, 0], [0, 0, 0, 1]]}
  for mode, targets in expected.items():
    ds = pipeline.pseudo_labeled_dataset(str(tmp_path / "p.tfrecord"), CONFIG, num_classes=4,
                                         pseudo_labels=mode, shuffle_buffer=1, repeat=False)
    got = sorted(target.tolist() for _, target in ds.as_numpy_iterator())
    np.testing.assert_allclose(got, sorted(targets), atol=1e-3)  # float16 top-k
  with pytest.raises(ValueError, match="pseudo_labels"):
    pipeline.pseudo_labeled_dataset(str(tmp_path / "p.tfrecord"), CONFIG, num_classes=4,
                                    pseudo_labels="sharp")


@pytest.fixture(scope="module")
def data(accelerator_inputs):
  return accelerator_inputs


BRIGHT_CHANNEL_CLASSES = 3  # accelerator_inputs' labeled shards (tests/conftest.py)


def test_training_batches_have_a_static_shape(data):
  """A TPU compiles one program per shape: the student's batches (labeled + pseudo-labeled) all
  have the same, fully defined one."""
  prep = preprocess.PreprocessConfig(image_size=16, small_image=True)
  labeled = pipeline.labeled_dataset(str(data["labeled"]), prep, num_classes=BRIGHT_CHANNEL_CLASSES,
                                     seed=0)
  stream = pipeline.student_dataset(labeled, labeled.map(lambda x, y: (x, y)), 8, 2)
  images, targets = stream.element_spec
  assert images.shape.is_fully_defined() and targets.shape.is_fully_defined()
  assert images.shape[0] == targets.shape[0] == 8 + 16
