"""The filter-and-balance rule against a brute-force statement of it, and the phase end to end."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from data import manifest as manifest_lib
from data import records
from noisy_student import filter_balance
from noisy_student.phases import filter_phase


def _reference(labels, confidences, ids, *, num_classes, threshold, images_per_class, duplicate,
               seed):
  """The rule, stated on all records at once: (ids, copies, before, after) per kept record."""
  labels, ids = np.asarray(labels), np.asarray(ids)
  confidences = np.asarray(confidences, np.float32).astype(np.float64)  # The rule's precision.
  valid = (labels >= 0) & (labels < num_classes) & np.isfinite(confidences) & (confidences >= 0)
  above = valid & (confidences >= (threshold or 0.0))
  kept = []
  for c in range(num_classes):
    members = np.flatnonzero(above & (labels == c))
    members = members[np.lexsort((ids[members], -confidences[members]))]
    kept.append(members[:images_per_class] if images_per_class else members)
  copies = {}
  for c, members in enumerate(kept):
    members = members[np.argsort(ids[members])]
    counts = np.ones(len(members), np.int64)
    if duplicate and images_per_class and 0 < len(members) < images_per_class:
      whole, remainder = divmod(images_per_class, len(members))
      counts[:] = whole
      counts[np.random.default_rng([seed, c]).choice(len(members), remainder, replace=False)] += 1
    copies.update(zip(ids[members].tolist(), counts.tolist()))
  kept_ids = np.array(sorted(copies), np.int64)
  before = np.bincount(labels[valid], minlength=num_classes)
  after = np.bincount(labels[above], minlength=num_classes)
  return kept_ids, np.array([copies[i] for i in kept_ids.tolist()], np.int64), before, after


def _random_predictions(rng, n, num_classes, *, ties, invalid):
  # Skewed classes, so some are over-full and some short; ids in a random arrival order.
  labels = np.minimum(rng.geometric(0.3, n) - 1, num_classes - 1)
  confidences = rng.random(n)
  if ties:
    confidences = np.round(confidences * 8) / 8
  if invalid:
    bad = rng.choice(n, n // 20, replace=False)
    confidences[bad[0::4]] = np.nan
    confidences[bad[1::4]] = -0.25
    confidences[bad[2::4]] = np.inf
    labels[bad[3::4]] = rng.choice([-1, num_classes], len(bad[3::4]))
  ids = rng.permutation(n) * 3 + 7
  return labels, confidences, ids


def _chunks(rng, arrays, max_cuts):
  cuts = np.sort(rng.integers(0, len(arrays[0]) + 1, rng.integers(0, max_cuts)))
  bounds = np.concatenate([[0], cuts, [len(arrays[0])]])
  return [tuple(a[lo:hi] for a in arrays) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _select(arrays, chunks_rng, *, num_classes, compaction_buffer=4, max_cuts=12, **rule):
  selector = filter_balance.Selector(num_classes, filter_balance.FilterRule(**rule),
                                     compaction_buffer=compaction_buffer)
  for chunk in _chunks(chunks_rng, arrays, max_cuts):
    selector.add(*chunk)
  return selector.result()


RULES = {
    "balanced": dict(num_classes=6, threshold=0.3, images_per_class=40, duplicate=True),
    "no_duplication": dict(num_classes=6, threshold=0.5, images_per_class=25, duplicate=False),
    "one_class": dict(num_classes=1, threshold=0.2, images_per_class=300, duplicate=True),
    "all_below": dict(num_classes=4, threshold=1.0, images_per_class=10, duplicate=True),
    "threshold_off": dict(num_classes=5, threshold=None, images_per_class=30, duplicate=True),
    "threshold_zero": dict(num_classes=5, threshold=0, images_per_class=30, duplicate=True),
    "balancing_off": dict(num_classes=5, threshold=0.3, images_per_class=None, duplicate=True),
    "both_off": dict(num_classes=5, threshold=None, images_per_class=None, duplicate=False),
    "target_one": dict(num_classes=3, threshold=0.1, images_per_class=1, duplicate=True),
    "many_classes": dict(num_classes=1000, threshold=0.3, images_per_class=3, duplicate=True),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_selector_matches_brute_force(name):
  for seed in range(12):
    _check_against_brute_force(RULES[name], seed)


def _check_against_brute_force(rule, seed):
  rng = np.random.default_rng(seed)
  labels, confidences, ids = _random_predictions(rng, int(rng.integers(0, 600)),
                                                 rule["num_classes"], ties=seed % 2 == 0,
                                                 invalid=seed % 3 == 0)
  if seed % 4 == 1:
    confidences = confidences.astype(np.float32)
  selection = _select((labels, confidences, ids), rng, seed=seed, **rule)
  kept_ids, copies, before, after = _reference(labels, confidences, ids, seed=seed, **rule)
  np.testing.assert_array_equal(selection.record_ids, kept_ids)
  np.testing.assert_array_equal(selection.copies, copies)
  np.testing.assert_array_equal(selection.before_threshold, before)
  np.testing.assert_array_equal(selection.after_threshold, after)
  by_id = dict(zip(ids.tolist(), range(len(ids))))
  rows = [by_id[i] for i in kept_ids.tolist()]
  np.testing.assert_array_equal(selection.labels, labels[rows])
  np.testing.assert_array_equal(selection.confidences, np.asarray(confidences, np.float32)[rows])
  assert selection.invalid_probability + selection.invalid_label + before.sum() == len(labels)


def test_selector_duplicates_short_classes_to_exact_target_and_reports_empty_ones():
  labels = np.array([0, 0, 0, 1, 2, 2, 2, 2, 2])
  confidences = np.array([0.9, 0.8, 0.7, 0.1, 0.9, 0.95, 0.6, 0.9, 0.35])
  selection = filter_balance.filter_and_balance(
      [(labels, confidences, np.arange(9))], num_classes=4,
      rule=filter_balance.FilterRule(threshold=0.3, images_per_class=4, duplicate=True, seed=3))
  np.testing.assert_array_equal(selection.record_ids, [0, 1, 2, 4, 5, 6, 7])
  # Class 0: 3 kept -> one copy each plus one extra; class 2: the 4 most confident, 4 and 7 tie
  # at 0.9 and both fit, 8 (0.35) is dropped.
  np.testing.assert_array_equal(selection.with_copies, [4, 0, 4, 0])
  assert sorted(selection.copies[:3].tolist()) == [1, 1, 2]
  assert selection.empty_classes == [1, 3] and selection.short_classes == [0]
  stats = selection.stats()
  assert stats["totals"]["with_copies"] == 8 and stats["per_class"]["after_threshold"] == [
      3, 0, 5, 0]
  json.dumps(stats)


def test_selector_breaks_ties_by_record_id_whatever_the_arrival_order():
  confidences = np.full(6, 0.5)
  ids = np.array([50, 10, 40, 20, 60, 30])
  for chunking in ([slice(0, 6)], [slice(0, 1), slice(1, 4), slice(4, 6)]):
    selector = filter_balance.Selector(
        1, filter_balance.FilterRule(threshold=0.3, images_per_class=3), compaction_buffer=1)
    for part in chunking:
      selector.add(np.zeros(len(ids[part]), int), confidences[part], ids[part])
    np.testing.assert_array_equal(selector.result().record_ids, [10, 20, 30])


def test_threshold_compares_float32_confidences_exactly():
  below = np.float32(0.7)  # 0.69999998...
  selection = filter_balance.filter_and_balance(
      [([0, 0], [below, np.nextafter(below, np.float32(1))], [0, 1])], num_classes=1,
      rule=filter_balance.FilterRule(threshold=0.7, images_per_class=None))
  np.testing.assert_array_equal(selection.record_ids, [1])


def test_selector_is_deterministic_and_seed_only_moves_the_remainder_copies():
  rng = np.random.default_rng(0)
  arrays = _random_predictions(rng, 500, 4, ties=True, invalid=False)
  rule = dict(num_classes=4, threshold=0.0, images_per_class=200, duplicate=True)
  first = _select(arrays, np.random.default_rng(1), seed=5, **rule)
  again = _select(arrays, np.random.default_rng(2), seed=5, **rule)
  other = _select(arrays, np.random.default_rng(1), seed=6, **rule)
  np.testing.assert_array_equal(first.record_ids, again.record_ids)
  np.testing.assert_array_equal(first.copies, again.copies)
  np.testing.assert_array_equal(first.record_ids, other.record_ids)
  np.testing.assert_array_equal(first.with_copies, other.with_copies)
  assert not np.array_equal(first.copies, other.copies)


def test_selector_memory_stays_bounded_by_classes_times_target():
  num_classes, target, buffer, chunk = 10, 100, 500, 1000
  bound = num_classes * target + max(num_classes * target // 8, buffer)
  selector = filter_balance.Selector(
      num_classes, filter_balance.FilterRule(threshold=0.0, images_per_class=target),
      compaction_buffer=buffer)
  rng = np.random.default_rng(0)
  fed = []
  for step in range(300):
    # Confidence rising over time is the worst case: most records beat the last cutoff.
    arrays = (rng.integers(0, num_classes, chunk), rng.random(chunk) * 0.5 + step / 600,
              np.arange(step * chunk, (step + 1) * chunk))
    selector.add(*arrays)
    fed.append(arrays)
    assert selector.num_candidates <= bound
  assert selector.peak_candidates <= bound + chunk
  selection = selector.result()
  with pytest.raises(RuntimeError):
    selector.add([0], [0.5], [10**9])
  labels, confidences, ids = (np.concatenate(a) for a in zip(*fed))
  kept_ids, copies, _, _ = _reference(labels, confidences, ids, num_classes=num_classes,
                                      threshold=0.0, images_per_class=target, duplicate=True,
                                      seed=0)
  np.testing.assert_array_equal(selection.record_ids, kept_ids)
  np.testing.assert_array_equal(selection.copies, copies)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval_raises_naming_it(threshold):
  with pytest.raises(ValueError, match=str(threshold)):
    filter_balance.FilterRule(threshold=threshold)


@pytest.mark.parametrize("images_per_class", [0, -5, 2.5])
def test_bad_images_per_class_raises(images_per_class):
  with pytest.raises(ValueError, match="images_per_class"):
    filter_balance.FilterRule(images_per_class=images_per_class)


def test_selector_rejects_malformed_chunks_and_repeated_ids():
  selector = filter_balance.Selector(3)
  with pytest.raises(ValueError, match="equally long"):
    selector.add([0, 1], [0.5], [0, 1])
  with pytest.raises(TypeError, match="labels"):
    selector.add([0.0], [0.5], [0])
  selector.add([0, 1], [0.5, 0.6], [0, 1])
  selector.add([2], [0.7], [1])
  with pytest.raises(ValueError, match="unique"):
    selector.result()


def test_invalid_records_are_counted_and_never_kept():
  selection = filter_balance.filter_and_balance(
      [([0, 0, 1, 1, 5, -1], [np.nan, -0.5, np.inf, 0.9, 0.9, 0.9], np.arange(6))],
      num_classes=2, rule=filter_balance.FilterRule(threshold=None, images_per_class=None))
  np.testing.assert_array_equal(selection.record_ids, [3])
  assert selection.invalid_probability == 3 and selection.invalid_label == 2
  assert selection.stats()["totals"]["invalid"] == 5


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


@pytest.mark.parametrize("seed", range(6))
def test_fill_limit_refuses_exactly_the_targets_beyond_ten_copies_and_names_one_that_fits(seed):
  rng = np.random.default_rng(seed)
  kept = rng.integers(0, 30, 7)
  kept[rng.integers(7)] = 0  # an empty class is never filled: it cannot limit the target
  smallest = int(kept[kept > 0].min())
  for target in (1, smallest, 10 * smallest, 10 * smallest + 1, 50 * smallest, 10 ** 6):
    # Plain restatement: some class with 0 < k < N would get more than 10 records per kept one.
    refused = any(0 < k < target and target > 10 * k for k in kept)
    error = filter_balance.fill_limit_error(kept, target)
    assert (error is not None) == refused, (kept, target)
    if refused:
      assert error.startswith(f"--images_per_class={target} would fill class ")
      assert f"--images_per_class={10 * smallest} fits" in error
      assert filter_balance.fill_limit_error(kept, 10 * smallest) is None
  assert filter_balance.fill_limit_error(kept, None) is None
  assert filter_balance.fill_limit_error(np.zeros(3, int), 100) is None


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
