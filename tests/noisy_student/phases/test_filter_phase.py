"""The filter phase (noisy_student/phases/filter_phase.py): prediction and image shards joined,
filtered, balanced and written; its refusals before it writes; its report of sample images,
each against an oracle written here."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from data import manifest as manifest_lib
from data import records
from noisy_student import filter_balance
from noisy_student import plots
from noisy_student.phases import filter_phase
from tests.noisy_student.test_filter_balance import _reference  # the brute-force selection


# The phase, on tiny shards written here.

NUM_CLASSES = 4


def _write_inputs(root, *, shard_sizes=(9, 0, 14), top_k=None, corrupt=None, seed=0):
  """Unlabeled and prediction shards plus summary.json; returns {key: prediction fields}."""
  rng = np.random.default_rng(seed)
  names = [f"extra-{i:05d}-of-{len(shard_sizes):05d}.tfrecord" for i in range(len(shard_sizes))]
  for sub in ("unlabeled", "predictions"):
    os.makedirs(os.path.join(root, sub))
  truth, entries, index = {}, [], 0
  for name, size in zip(names, shard_sizes):
    unlabeled, predicted = [], []
    for _ in range(size):
      key = f"img{index:04d}".encode()
      probabilities = rng.dirichlet(np.full(NUM_CLASSES, 0.4)).astype(np.float32)
      if corrupt and index in corrupt:
        probabilities[1] = corrupt[index]
      label, confidence = int(np.argmax(probabilities)), float(np.max(probabilities))
      unlabeled.append(records.make_example(key=key, image=b"png:" + key, label=0))
      if top_k:
        classes = np.argsort(-probabilities)[:top_k]
        soft = dict(top_k_classes=classes, top_k_probabilities=probabilities[classes])
      else:
        soft = dict(probabilities=probabilities)
      predicted.append(records.make_example(key=key, label=label, confidence=confidence, **soft))
      truth[key] = dict(label=label, confidence=np.float32(confidence), index=index, **soft)
      index += 1
    unlabeled_path = os.path.join(root, "unlabeled", name)
    records.write_atomically(unlabeled_path, unlabeled)
    records.write_atomically(os.path.join(root, "predictions", name), predicted)
    entries.append({"input": unlabeled_path, "output": name, "count": size})
  with open(os.path.join(root, "predictions", "summary.json"), "w") as f:
    json.dump({"shards": entries, "num_classes": NUM_CLASSES}, f)
  return truth


def _read_shards(directory, names):
  out = []
  for name in names:
    for serialized in tf.data.TFRecordDataset(os.path.join(directory, name)):
      out.append(tf.train.Example.FromString(serialized.numpy()).features.feature)
  return out


def _expected_copies(truth, **rule):
  ordered = sorted(truth.values(), key=lambda t: t["index"])
  labels = np.array([t["label"] for t in ordered])
  confidences = np.array([t["confidence"] for t in ordered], np.float64)
  confidences[[not np.all(np.asarray(t.get("probabilities", [0])) >= 0) for t in ordered]] = np.nan
  kept_ids, copies, _, _ = _reference(labels, confidences, np.arange(len(ordered)),
                                      num_classes=NUM_CLASSES, **rule)
  keys = sorted(truth)
  return {keys[i]: c for i, c in zip(kept_ids.tolist(), copies.tolist())}


PHASE_RULE = dict(threshold=0.4, images_per_class=6, duplicate=True, seed=1)
# Records 1 and 12 carry a NaN and a negative probability.
CORRUPT = {1: np.nan, 12: -0.2}


@pytest.fixture(scope="module")
def phase_run(tmp_path_factory):
  """One phase run on three shards (one empty), shared by the tests that only read its output."""
  root = tmp_path_factory.mktemp("phase")
  truth = _write_inputs(root, corrupt=CORRUPT)
  stats = filter_phase.filter_and_balance_phase(
      str(root / "predictions"), None, str(root / "out"),
      filter_balance.FilterRule(**PHASE_RULE), num_shards=3, batch_size=4)
  return root, truth, stats


def test_phase_writes_joined_balanced_shuffled_shards(phase_run):
  root, truth, stats = phase_run
  out = root / "out"
  manifest = json.loads((out / "manifest.json").read_text())
  train = manifest["splits"]["train"]
  assert manifest["source"] == "filter" and manifest["num_classes"] == NUM_CLASSES
  features = _read_shards(out, train["shards"])
  keys = [f[records.KEY].bytes_list.value[0] for f in features]
  expected = _expected_copies(truth, **PHASE_RULE)
  assert {k: keys.count(k) for k in set(keys)} == expected
  for f, key in zip(features, keys):
    assert f[records.ENCODED].bytes_list.value[0] == b"png:" + key
    assert f[records.LABEL].int64_list.value[0] == truth[key]["label"]
    assert f[records.CONFIDENCE].float_list.value[0] == truth[key]["confidence"]
    np.testing.assert_array_equal(f[records.PROBABILITIES].float_list.value,
                                  truth[key]["probabilities"])
  sizes = [sum(1 for _ in tf.data.TFRecordDataset(str(out / n))) for n in train["shards"]]
  assert max(sizes) - min(sizes) <= 1 and sum(sizes) == train["num_examples"] == len(keys)
  assert keys != sorted(keys)  # Shuffled.
  assert stats == json.loads((out / "stats.json").read_text())
  assert stats["totals"]["with_copies"] == len(keys) == sum(train["class_counts"])
  assert manifest_lib.split_shards(manifest, str(out)) == [str(out / n) for n in train["shards"]]
  assert stats["num_records_read"] == len(truth) and stats["num_shards"] == 3
  assert sorted(os.listdir(out)) == sorted(train["shards"] + [
      "manifest.json", "stats.json", "confidence_per_class.png", "class_counts.png",
      filter_phase.SAMPLES_PLOT])


@pytest.mark.parametrize("named", [NUM_CLASSES, NUM_CLASSES + 1])
def test_phase_names_classes_as_the_unlabeled_manifest_does(tmp_path, plot_labels, named):
  """The manifest beside the unlabeled shards names the classes: the filter's manifest and plots
  carry the names on; with a different number of names, neither uses them."""
  _write_inputs(tmp_path)
  names = [f"kind {c}" for c in range(named)]
  manifest_lib.save_manifest(str(tmp_path / "unlabeled"),
                             {"class_names": names, "num_classes": named, "splits": {}})
  filter_phase.filter_and_balance_phase(
      str(tmp_path / "predictions"), None, str(tmp_path / "out"),
      filter_balance.FilterRule(threshold=0, images_per_class=None))
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  expected = names if named == NUM_CLASSES else None
  assert manifest["class_names"] == (expected or [])
  titles = [title for _, title in plot_labels["confidence_per_class.png"][:NUM_CLASSES]]
  assert titles == (expected or [f"class {c}" for c in range(NUM_CLASSES)])
  (ticks, _), = plot_labels["class_counts.png"]
  assert ticks == (expected or [str(c) for c in range(NUM_CLASSES)])


def test_phase_skips_and_counts_nan_and_negative_probabilities(phase_run):
  root, truth, stats = phase_run
  names = json.loads((root / "out" / "manifest.json").read_text())["splits"]["train"]["shards"]
  keys = {f[records.KEY].bytes_list.value[0] for f in _read_shards(root / "out", names)}
  bad = {k for k, t in truth.items() if t["index"] in CORRUPT}
  assert len(bad) == 2 and not keys & bad
  assert stats["totals"]["invalid_probability"] == len(CORRUPT)
  assert stats["totals"]["before_threshold"] == len(truth) - len(CORRUPT)


def test_phase_output_bytes_depend_only_on_inputs_and_seed(phase_run):
  root, _, _ = phase_run
  runs = {}
  for name, seed in (("out", None), ("again", 1), ("other_seed", 2)):
    out = root / name
    if seed is not None:
      filter_phase.filter_and_balance_phase(
          str(root / "predictions"), None, str(out),
          filter_balance.FilterRule(**dict(PHASE_RULE, seed=seed)), num_shards=3, batch_size=5)
    runs[name] = {n: (out / n).read_bytes() for n in sorted(os.listdir(out))}
  assert runs["out"] == runs["again"]
  shards = [n for n in runs["out"] if n.endswith(".tfrecord")]
  assert any(runs["out"][n] != runs["other_seed"][n] for n in shards)


def test_phase_takes_explicit_lists_with_top_k_and_no_balancing(tmp_path):
  truth = _write_inputs(tmp_path, top_k=2, shard_sizes=(5, 8))
  predictions = sorted(str(p) for p in (tmp_path / "predictions").glob("*.tfrecord"))
  out = tmp_path / "out"
  out.mkdir()
  stale = "train-00000-of-00005.tfrecord"  # Listed by a previous run's manifest: removed.
  (out / stale).write_bytes(b"")
  (out / "notes.txt").write_text("not ours")
  manifest_lib.save_manifest(str(out), {"splits": {"train": {"shards": [stale]}}})
  stats = filter_phase.filter_and_balance_phase(
      predictions, str(tmp_path / "unlabeled" / "*.tfrecord"), str(out),
      filter_balance.FilterRule(threshold=None, images_per_class=None), num_classes=NUM_CLASSES,
      batch_size=3)
  names = json.loads((out / "manifest.json").read_text())["splits"]["train"]["shards"]
  assert len(names) == 2
  assert sorted(os.listdir(out)) == sorted(names + [
      "manifest.json", "notes.txt", "stats.json", "confidence_per_class.png", "class_counts.png",
      filter_phase.SAMPLES_PLOT])
  features = _read_shards(out, names)
  assert sorted(f[records.KEY].bytes_list.value[0] for f in features) == sorted(truth)
  for f in features:
    t = truth[f[records.KEY].bytes_list.value[0]]
    np.testing.assert_array_equal(f[records.TOP_K_CLASSES].int64_list.value, t["top_k_classes"])
    np.testing.assert_array_equal(f[records.TOP_K_PROBABILITIES].float_list.value,
                                  t["top_k_probabilities"].astype(np.float16))
  assert stats["soft_label"] == "top_k" and stats["totals"]["kept_unique"] == len(truth)


def test_phase_requires_num_classes_for_top_k_without_summary(tmp_path):
  _write_inputs(tmp_path, top_k=2, shard_sizes=(3,))
  with pytest.raises(ValueError, match="num_classes"):
    filter_phase.filter_and_balance_phase(
        str(tmp_path / "predictions" / "*.tfrecord"), str(tmp_path / "unlabeled"),
        str(tmp_path / "out"))


def _replace_record(path, index, example):
  serialized = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  serialized[index] = example
  records.write_atomically(path, serialized)


def test_phase_key_mismatch_names_both_files_and_writes_nothing(tmp_path):
  truth = _write_inputs(tmp_path)
  name = "extra-00002-of-00003.tfrecord"
  prediction = str(tmp_path / "predictions" / name)
  t = next(v for v in truth.values() if v["index"] == 9 + 5)  # Record 5 of shard 2.
  _replace_record(prediction, 5, records.make_example(
      key=b"stranger", label=t["label"], confidence=t["confidence"],
      probabilities=t["probabilities"]))
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="record 5 ") as error:
    filter_phase.filter_and_balance_phase(str(tmp_path / "predictions"), None, str(out),
                                          filter_balance.FilterRule(**PHASE_RULE), batch_size=4)
  assert prediction in str(error.value) and str(tmp_path / "unlabeled" / name) in str(error.value)
  assert not out.exists() or not os.listdir(out)


def test_phase_short_prediction_shard_is_an_error_naming_it(tmp_path):
  _write_inputs(tmp_path)
  prediction = str(tmp_path / "predictions" / "extra-00002-of-00003.tfrecord")
  serialized = [r.numpy() for r in tf.data.TFRecordDataset(prediction)]
  records.write_atomically(prediction, serialized[:-1])
  with pytest.raises(ValueError, match="summary.json lists 14") as error:
    filter_phase.filter_and_balance_phase(str(tmp_path / "predictions"), None,
                                          str(tmp_path / "out"),
                                          filter_balance.FilterRule(**PHASE_RULE))
  assert prediction in str(error.value) and not (tmp_path / "out").exists()
  # Without summary.json the record-by-record pass catches it, still before any final file.
  (tmp_path / "predictions" / "summary.json").unlink()
  with pytest.raises(ValueError, match="ends at record 13") as error:
    filter_phase.filter_and_balance_phase(str(tmp_path / "predictions"),
                                          str(tmp_path / "unlabeled"), str(tmp_path / "out"),
                                          filter_balance.FilterRule(**PHASE_RULE),
                                          num_classes=NUM_CLASSES, batch_size=4)
  assert prediction in str(error.value)
  assert not os.listdir(tmp_path / "out")


def test_phase_refuses_a_target_that_floods_a_class_before_writing_and_its_value_fits(
    tmp_path, plot_labels):
  truth = _write_inputs(tmp_path, shard_sizes=(30, 25))
  kept = np.bincount([t["label"] for t in truth.values() if t["confidence"] >= 0.3],
                     minlength=NUM_CLASSES)
  names = ["ant", "bee", "cat", "dog"]
  summary_path = tmp_path / "predictions" / "summary.json"
  summary = json.loads(summary_path.read_text())
  summary_path.write_text(json.dumps({**summary, "class_names": names}))
  fits = 10 * int(kept[kept > 0].min())
  out = tmp_path / "out"
  with pytest.raises(ValueError) as error:
    filter_phase.filter_and_balance_phase(str(tmp_path / "predictions"), None, str(out),
                                          filter_balance.FilterRule(images_per_class=fits + 1))
  smallest = names[int(np.flatnonzero(kept == kept[kept > 0].min())[0])]
  assert str(error.value).startswith(f"--images_per_class={fits + 1} would fill class "
                                     f"{smallest!r}")
  assert f"--images_per_class={fits} fits" in str(error.value)
  assert not out.exists()
  # Without copies nothing is filled, so nothing is refused; with the value named, it runs.
  filter_phase.filter_and_balance_phase(
      str(tmp_path / "predictions"), None, str(out),
      filter_balance.FilterRule(images_per_class=fits + 1, duplicate=False))
  stats = filter_phase.filter_and_balance_phase(
      str(tmp_path / "predictions"), None, str(out), filter_balance.FilterRule(
          images_per_class=fits))
  per_class = stats["per_class"]
  assert per_class["with_copies"] == [fits if k else 0 for k in kept.tolist()]
  assert all(w <= 10 * k for w, k in zip(per_class["with_copies"], per_class["kept_unique"]))
  assert stats["class_names"] == names
  # summary.json's names (the teacher's, as predict records them) name the plots' classes too.
  titles = [title for _, title in plot_labels["confidence_per_class.png"][:NUM_CLASSES]]
  assert titles == names and plot_labels["class_counts.png"][0][0] == names
  assert json.loads((out / "manifest.json").read_text())["class_names"] == names


def test_phase_refuses_a_target_beyond_ten_times_every_image_before_reading_them(tmp_path):
  _write_inputs(tmp_path, shard_sizes=(9, 14))
  (tmp_path / "predictions" / "extra-00000-of-00002.tfrecord").write_bytes(b"not read")
  with pytest.raises(ValueError) as error:
    filter_phase.filter_and_balance_phase(str(tmp_path / "predictions"), None,
                                          str(tmp_path / "out"), filter_balance.FilterRule())
  assert str(error.value) == (
      "--images_per_class=130000 is more than 10x the 23 unlabeled images (a class is filled to "
      "at most 10x its kept images): try --images_per_class=5, an even share of them for each "
      "of 4 classes")


# Filter: the grid of sample pseudo-labeled images.


def _selection(labels, confidences, record_ids):
  num_classes = int(labels.max()) + 1
  zeros = np.zeros(num_classes, np.int64)
  return filter_balance.Selection(
      record_ids=np.asarray(record_ids, np.int64), labels=np.asarray(labels, np.int32),
      confidences=np.asarray(confidences, np.float32), copies=np.ones(len(labels), np.int32),
      before_threshold=zeros, after_threshold=zeros,
      kept_unique=np.bincount(labels, minlength=num_classes), with_copies=zeros,
      invalid_probability=0, invalid_label=0, threshold=0.3, images_per_class=None,
      duplicate=False, seed=0)


def _oracle_samples(labels, confidences, record_ids, per_end):
  """Per class: kept records sorted by confidence descending, then id; the ends."""
  found = {}
  for c in sorted(set(labels.tolist())):
    ordered = sorted((-float(np.float32(f)), int(i))
                     for f, i, label in zip(confidences, record_ids, labels) if label == c)
    ids = [i for _, i in ordered]
    found[c] = ids if len(ids) <= 2 * per_end else ids[:per_end] + ids[-per_end:]
  return found


@pytest.mark.parametrize("seed", [0, 1])
def test_report_samples_are_the_most_and_least_confident_kept_per_class(seed):
  rng = np.random.default_rng(seed)
  count = 300
  labels = rng.integers(0, 5, count)
  labels[labels == 4] = 3  # class 4 keeps nothing
  labels[:3] = 4
  confidences = np.round(rng.uniform(0.3, 1, count), 2)  # coarse: many ties
  record_ids = np.sort(rng.choice(10 * count, count, replace=False))
  samples = filter_phase.report_samples(_selection(labels, confidences, record_ids), per_end=8)
  expected = _oracle_samples(labels, confidences, record_ids, 8)
  assert [c for c, _ in samples] == [0, 1, 2, 3, 4]
  for c, ids in samples:
    assert ids.tolist() == expected[c]
  assert len(dict(samples)[4]) == 3  # fewer than 2 x 8: all of them


def test_report_samples_of_many_classes_are_a_seeded_choice_of_classes():
  labels = np.arange(100) % 50
  selection = _selection(labels, np.full(100, 0.5), np.arange(100))
  chosen = [[c for c, _ in filter_phase.report_samples(selection, max_classes=20, seed=s)]
            for s in (0, 0, 1)]
  assert chosen[0] == chosen[1] != chosen[2]
  assert len(chosen[0]) == 20 and chosen[0] == sorted(set(chosen[0]))


GRID_CLASSES = 3


def _png(value):
  """A 4x4 PNG whose pixels are (value % 256, value // 256, 7): it names its record."""
  pixels = np.zeros((4, 4, 3), np.uint8)
  pixels[..., 0], pixels[..., 1], pixels[..., 2] = value % 256, value // 256, 7
  return tf.io.encode_png(pixels).numpy()


def _write_phase_inputs(root, sizes=(70, 50)):
  rng = np.random.default_rng(5)
  os.makedirs(root / "unlabeled")
  os.makedirs(root / "predictions")
  entries, index = [], 0
  for s, size in enumerate(sizes):
    name = f"extra-{s:05d}-of-{len(sizes):05d}.tfrecord"
    unlabeled, predicted = [], []
    for _ in range(size):
      key = f"img{index:04d}".encode()
      probabilities = rng.dirichlet(np.full(GRID_CLASSES, 0.5)).astype(np.float32)
      image = b"not an image" if index == 3 else _png(index)
      unlabeled.append(records.make_example(key=key, image=image))
      predicted.append(records.make_example(
          key=key, label=int(np.argmax(probabilities)), confidence=float(probabilities.max()),
          probabilities=probabilities))
      index += 1
    records.write_atomically(str(root / "unlabeled" / name), unlabeled)
    records.write_atomically(str(root / "predictions" / name), predicted)
    entries.append({"input": str(root / "unlabeled" / name), "output": name, "count": size})
  (root / "predictions" / "summary.json").write_text(
      json.dumps({"shards": entries, "num_classes": GRID_CLASSES}))


def test_filter_writes_a_grid_of_the_most_and_least_confident_kept_images(tmp_path, monkeypatch):
  _write_phase_inputs(tmp_path)
  drawn = []
  draw = plots.pseudo_label_samples
  monkeypatch.setattr(plots, "pseudo_label_samples",
                      lambda rows, path, **kw: (drawn.append(rows), draw(rows, path, **kw))[1])
  out = tmp_path / "out"
  # 30 per class: classes above it are cut to their 30 most confident, those below are filled
  # with copies, which the grid leaves out.
  filter_phase.filter_and_balance_phase(
      str(tmp_path / "predictions"), None, str(out),
      filter_balance.FilterRule(threshold=0.3, images_per_class=30, seed=2), num_shards=2)
  png = (out / filter_phase.SAMPLES_PLOT).read_bytes()
  assert png.startswith(b"\x89PNG")
  # The oracle reads what the filter wrote: every distinct kept record of the output shards.
  kept = {}
  manifest = json.loads((out / "manifest.json").read_text())
  for name in manifest["splits"]["train"]["shards"]:
    for serialized in tf.data.TFRecordDataset(str(out / name)):
      feature = tf.train.Example.FromString(serialized.numpy()).features.feature
      key = feature[records.KEY].bytes_list.value[0].decode()
      kept[key] = (feature[records.LABEL].int64_list.value[0],
                   feature[records.CONFIDENCE].float_list.value[0])
  keys = sorted(kept)  # record order: keys are numbered in it
  labels = np.array([kept[k][0] for k in keys])
  confidences = np.array([kept[k][1] for k in keys], np.float32)
  expected = _oracle_samples(labels, confidences, np.array([int(k[3:]) for k in keys]), 8)
  (rows,) = drawn
  assert [c for c, _ in rows] == list(range(GRID_CLASSES))
  assert any(len(ids) == 16 for ids in expected.values())  # a class shows both ends
  for c, images in rows:
    assert len(images) == len(expected[c])
    for (image, confidence), index in zip(images, expected[c]):
      assert confidence == kept[f"img{index:04d}"][1]
      if index == 3:
        assert image is None  # not decodable: drawn as such
      else:
        np.testing.assert_array_equal(image[0, 0], [index % 256, index // 256, 7])
