"""The filter-and-balance rule against a brute-force statement of it, and the phase end to end."""

import json

import numpy as np
import pytest

from noisy_student import filter_balance


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
