"""The filter-and-balance phase: prediction shards + their unlabeled shards -> training shards.

Load -> core (`noisy_student.filter_balance`, which states the selection rule) -> save, in two
streaming passes.

Pass 1 reads only the prediction shards (hard label, confidence and soft label; no images) in
tf.data batches and feeds the core. Record ids are global record order: the records of
prediction shard s are numbered after those of shards 0..s-1. A record whose soft label holds a
NaN, infinite or negative value, or a top-k class outside [0, C), goes to the core with a NaN
confidence, so it is skipped and counted as invalid. Pass 1 also checks each pair's first keys
and, given summary.json, each prediction shard's record count.

Pass 2 reads each pair of shards in lockstep, checks the key of every record and that both
shards end together, and writes each selected record `copies` times: `image/encoded` and
`image/key` from the unlabeled shard; `image/class/label` (the hard pseudo label), the soft label
fields as the prediction holds them, and `confidence` from the prediction. A label the unlabeled
shard carries is dropped.

Shuffle: output records are numbered in input order (record id, then copy). Those coming from
input shard s go to output shards given by their numbers modulo num_shards, permuted with
`default_rng([seed, 1, s])`, so shard sizes differ by at most one and every shard gets an even
mix of every input shard. Records are appended to one hidden spill file per output shard; once
every input record has been read and checked, each spill file is read back (memory: one output
shard), permuted with `default_rng([seed, 2, j])`, written atomically under its final name and
removed. A key or count mismatch thus leaves no final file: the temporaries are removed.

Output directory: `train-XXXXX-of-YYYYY.tfrecord` shards, `manifest.json` (`data.manifest`'s
layout with one split, "train", and source "filter", so the directory can be passed as
pseudo-labeled data) and `stats.json`, written last. Shards a previous run's manifest listed and
this run did not write are removed. The same inputs and seed give the same bytes.

Report plots, beside them: the teacher's confidence per class, images per class before and after
balancing, and `pseudo_label_samples.png`, a grid of kept images per class with their confidence
(`report_samples` picks them; their records are kept as pass 2 writes them, so the output is not
read again).
"""

import dataclasses
import itertools
import json
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from data import manifest as manifest_lib
from data import records
from noisy_student import filter_balance
from noisy_student import plots

HISTOGRAM_BINS = 20  # confidence bins of the report plot
# The sample grid (pseudo_label_samples.png): per class the SAMPLES_PER_END most and least
# confident kept images, for at most SAMPLE_CLASSES classes (a seeded choice of them beyond).
SAMPLES_PER_END = 8
SAMPLE_CLASSES = 20
SAMPLES_PLOT = "pseudo_label_samples.png"

SUMMARY = "summary.json"
STATS = "stats.json"
SHARD_PREFIX = "train"
# Seed-sequence tags, so the shard assignment, the shuffles and the report's choice of classes
# draw independent streams.
ASSIGN_TAG, SHUFFLE_TAG, SAMPLE_TAG = 1, 2, 3
_LOG_EVERY_S = 10


@dataclasses.dataclass(frozen=True)
class ShardPair:
  prediction: str
  unlabeled: str
  count: int | None  # The prediction shard's record count in summary.json, if any.


@dataclasses.dataclass(frozen=True)
class SoftLabel:
  field: str  # records.PROBABILITIES or records.TOP_K_PROBABILITIES.
  width: int  # C, or k.

  @property
  def is_top_k(self):
    return self.field == records.TOP_K_PROBABILITIES


def filter_and_balance_phase(predictions, unlabeled_data, output_dir,
                             rule=filter_balance.FilterRule(), *, num_shards=None,
                             num_classes=None, batch_size=1024, class_names=None):
  """Filters pseudo labels by confidence, balances classes, and writes training shards.

  Args:
    predictions: the predict phase's output directory (its summary.json lists the shard pairs,
      counts and num_classes), or a directory, glob or list of prediction shard paths.
    unlabeled_data: the unlabeled shards the predictions came from: a directory (its
      manifest.json lists them, else every visible non-JSON file), a glob, or a list. None takes
      them from summary.json. Shards are paired with prediction shards in sorted order; the key
      of every record is checked.
    output_dir: where the training shards, manifest.json and stats.json go.
    rule: a `filter_balance.FilterRule` (threshold, images per class, duplication, seed); its
      seed also seeds the shard assignment and the shuffle.
    num_shards: output shards; None: as many as input shards; never more than output records.
      Pass 2 keeps one spill file per output shard open, and shuffles one shard in memory.
    num_classes: C; None: from summary.json or the width of `probabilities` (required for top-k
      predictions without summary.json).
    batch_size: records per tf.data batch when reading.
    class_names: the classes' names for the manifest, stats.json, plots and messages; None:
      summary.json's (the teacher's, when predict recorded them), else the unlabeled data's
      manifest's, else the class numbers.

  Returns:
    The stats dict written to stats.json.

  Raises:
    ValueError: bad arguments, shards that do not pair up (count or key mismatch, naming both
      files and the record index), unreadable prediction records, or a target that fills a
      class beyond filter_balance.MAX_FILL_FACTOR times its kept records (checked once the
      predictions are counted, before anything is written; `check_images_per_class` before
      that when summary.json gives the image count).
  """
  if num_shards is not None and int(num_shards) < 1:
    raise ValueError(f"num_shards must be >= 1 or None, got {num_shards!r}")
  pairs, summary = _resolve_pairs(predictions, unlabeled_data)
  classes = num_classes or (summary or {}).get("num_classes")
  if classes and all(pair.count is not None for pair in pairs):  # before reading a record
    filter_balance.check_images_per_class(rule, sum(pair.count for pair in pairs), classes)
  soft, num_classes, selection, counts, histogram = _select(pairs, summary, rule, num_classes,
                                                            batch_size)
  class_names = _class_names(class_names, summary, pairs, num_classes)
  if rule.duplicate:
    refusal = filter_balance.fill_limit_error(selection.kept_unique, rule.images_per_class,
                                              class_names)
    if refusal:
      raise ValueError(refusal)
  if selection.empty_classes:
    logging.warning("filter: %d classes have no kept record and stay empty: %s",
                    len(selection.empty_classes),
                    ", ".join(class_names[c] if class_names else str(c)
                              for c in selection.empty_classes[:20]))
  samples = report_samples(selection, seed=rule.seed)
  shard_names, sampled = _write_training_shards(
      pairs, counts, selection, soft, output_dir, num_shards, rule.seed, batch_size,
      sample_ids=np.concatenate([ids for _, ids in samples] + [np.zeros(0, np.int64)]))
  stats = save_summaries(output_dir, pairs, counts, selection, soft, shard_names, class_names)
  plots.confidence_histograms(histogram, os.path.join(output_dir, "confidence_per_class.png"),
                              threshold=rule.threshold, class_names=class_names)
  plots.class_counts(selection.after_threshold, selection.with_copies,
                     os.path.join(output_dir, "class_counts.png"), class_names=class_names)
  plots.pseudo_label_samples(
      [(label, [_decoded_sample(sampled[i]) for i in ids]) for label, ids in samples],
      os.path.join(output_dir, SAMPLES_PLOT), threshold=rule.threshold, class_names=class_names)
  return stats


def _class_names(given, summary, pairs, num_classes):
  """The names the filter's outputs carry on: `given`, else the teacher's from summary.json,
  else those of the unlabeled data's manifest (when it came from labeled data, as the
  converter's splits do); None when none names `num_classes` classes."""
  for names in (given, (summary or {}).get("class_names"),
                manifest_lib.class_names_for(pairs[0].unlabeled, num_classes)):
    if names and len(names) == num_classes:
      return [str(name) for name in names]
  return None


def report_samples(selection, per_end=SAMPLES_PER_END, max_classes=SAMPLE_CLASSES, seed=0):
  """The kept records the sample grid shows: [(class, record ids)], classes ascending.

  Per class, its kept records (copies aside) ordered by confidence descending, then record id
  ascending (the filter's own order): all of them when there are at most 2 * per_end, else the
  first per_end and the last per_end, i.e. the most and the least confident kept. With more
  than `max_classes` classes, `max_classes` of them drawn with `default_rng([seed, SAMPLE_TAG])`.
  """
  num_classes = selection.num_classes
  classes = np.arange(num_classes)
  if num_classes > max_classes:
    classes = np.sort(np.random.default_rng([seed, SAMPLE_TAG]).choice(
        num_classes, max_classes, replace=False))
  order = np.lexsort((selection.record_ids, -selection.confidences.astype(np.float64),
                      selection.labels))
  labels, ids = selection.labels[order], selection.record_ids[order]
  starts = np.searchsorted(labels, classes, side="left")
  ends = np.searchsorted(labels, classes, side="right")
  samples = []
  for label, start, end in zip(classes, starts, ends):
    chosen = ids[start:end]
    if len(chosen) > 2 * per_end:
      chosen = np.concatenate([chosen[:per_end], chosen[-per_end:]])
    samples.append((int(label), chosen.astype(np.int64)))
  return samples


def _decoded_sample(serialized):
  """(image uint8 [H, W, 3] or None when its bytes do not decode, confidence) of a training
  record as written."""
  feature = tf.train.Example.FromString(serialized).features.feature
  confidence = feature[records.CONFIDENCE].float_list.value[0]
  try:
    image = tf.io.decode_image(feature[records.ENCODED].bytes_list.value[0], channels=3,
                               expand_animations=False).numpy()
  except tf.errors.OpError:  # the filter never decodes; a bad image shows as such, not as a crash
    image = None
  return image, confidence


def _resolve_pairs(predictions, unlabeled_data):
  """Pairs prediction shards with unlabeled shards; returns (pairs, summary or None)."""
  summary = None
  if not isinstance(predictions, (list, tuple)):
    summary_path = os.path.join(str(predictions), SUMMARY)
    if tf.io.gfile.isdir(str(predictions)) and tf.io.gfile.exists(summary_path):
      summary = _load_json(summary_path)
  if summary is not None:
    entries = sorted(summary["shards"], key=lambda entry: entry["output"])
    prediction_paths = [os.path.join(str(predictions), e["output"]) for e in entries]
    counts = [e.get("count") for e in entries]
    inputs = [e["input"] for e in entries]
  else:
    prediction_paths = _list_shards(predictions)
    counts = [None] * len(prediction_paths)
    inputs = None
  if unlabeled_data is not None:
    inputs = _list_shards(unlabeled_data)
  elif inputs is None:
    raise ValueError(f"unlabeled_data is required: {predictions!r} has no {SUMMARY}")
  if len(inputs) != len(prediction_paths):
    raise ValueError(f"{len(prediction_paths)} prediction shards but {len(inputs)} unlabeled "
                     f"shards; they must pair one to one")
  return [ShardPair(p, u, c) for p, u, c in zip(prediction_paths, inputs, counts)], summary


def _list_shards(spec):
  """Sorted shard paths from a list, a directory (manifest.json or every shard file) or a glob."""
  if isinstance(spec, (list, tuple)):
    paths = [str(p) for p in spec]
  elif tf.io.gfile.isdir(str(spec)):
    paths = _shards_in_directory(str(spec))
  else:
    paths = records.without_hidden(tf.io.gfile.glob(str(spec)))
  if not paths:
    raise ValueError(f"no shards found at {spec!r}")
  return sorted(paths)


def _shards_in_directory(directory):
  manifest = manifest_lib.load_manifest(directory)
  if manifest is not None:
    return manifest_lib.split_shards(manifest, directory)
  names = tf.io.gfile.listdir(directory)
  # Not shards: summaries, and the tables for people predict writes beside its shards.
  return [os.path.join(directory, n) for n in names
          if not n.startswith(".") and not n.endswith((".json", ".jsonl", ".csv"))
          and not tf.io.gfile.isdir(os.path.join(directory, n))]


def _load_json(path):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _first_records(paths):
  """The first serialized record of each shard, b"" for an empty one, through one pipeline."""
  def first(path):
    return tf.data.TFRecordDataset(path).concatenate(tf.data.Dataset.from_tensors("")).take(1)

  return list(tf.data.Dataset.from_tensor_slices(paths).flat_map(first).as_numpy_iterator())


def _key(serialized):
  if not serialized:
    return "none (empty shard)"
  return tf.train.Example.FromString(serialized).features.feature[records.KEY].bytes_list.value[0]


def _soft_label_format(pairs, first_records):
  """Which soft label field the predictions carry, and its width, from the first record."""
  for pair, serialized in zip(pairs, first_records):
    if not serialized:
      continue
    feature = tf.train.Example.FromString(serialized).features.feature
    for field in (records.PROBABILITIES, records.TOP_K_PROBABILITIES):
      if field in feature:
        return SoftLabel(field, len(feature[field].float_list.value))
    raise ValueError(f"{pair.prediction} record 0 has neither {records.PROBABILITIES!r} nor "
                     f"{records.TOP_K_PROBABILITIES!r}")
  raise ValueError(f"no prediction records in {[p.prediction for p in pairs]}")


def _check_first_keys(pairs, first_predictions):
  """A cheap early check that the pairing is right; pass 2 checks every record."""
  first_images = _first_records([pair.unlabeled for pair in pairs])
  for pair, predicted, image in zip(pairs, first_predictions, first_images):
    if _key(predicted) != _key(image):
      raise ValueError(f"record 0 of {pair.prediction} has key {_key(predicted)!r} but record 0 "
                       f"of {pair.unlabeled} has key {_key(image)!r}")


def _num_classes(num_classes, summary, soft):
  known = {"num_classes": num_classes,
           SUMMARY: summary.get("num_classes") if summary else None,
           records.PROBABILITIES: None if soft.is_top_k else soft.width}
  values = {source: int(v) for source, v in known.items() if v is not None}
  if not values:
    raise ValueError("num_classes is required for top-k predictions without summary.json")
  if len(set(values.values())) > 1:
    raise ValueError(f"the number of classes disagrees: {values}")
  return next(iter(values.values()))


def _prediction_features(soft, with_key):
  features = {
      records.LABEL: tf.io.FixedLenFeature([], tf.int64),
      records.CONFIDENCE: tf.io.FixedLenFeature([], tf.float32),
      soft.field: tf.io.FixedLenFeature([soft.width], tf.float32),
  }
  if soft.is_top_k:
    features[records.TOP_K_CLASSES] = tf.io.FixedLenFeature([soft.width], tf.int64)
  if with_key:
    features[records.KEY] = tf.io.FixedLenFeature([], tf.string)
  return features


def _label_and_confidence(soft, num_classes):
  """A batched parse fn: (labels, confidences), NaN where the soft label is invalid."""
  features = _prediction_features(soft, with_key=False)

  def parse(serialized):
    parsed = tf.io.parse_example(serialized, features)
    values = parsed[soft.field]
    valid = tf.reduce_all(tf.math.is_finite(values) & (values >= 0), axis=1)
    if soft.is_top_k:
      classes = parsed[records.TOP_K_CLASSES]
      valid &= tf.reduce_all((classes >= 0) & (classes < num_classes), axis=1)
    confidence = tf.where(valid, parsed[records.CONFIDENCE], float("nan"))
    return parsed[records.LABEL], confidence

  return parse


def _batches(path, batch_size, parse):
  return (tf.data.TFRecordDataset(path).batch(batch_size)
          .map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2).as_numpy_iterator())


def _add_to_histogram(histogram, labels, confidences):
  valid = np.isfinite(confidences) & (labels >= 0) & (labels < histogram.shape[0])
  bins = np.clip((confidences[valid] * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
  np.add.at(histogram, (labels[valid], bins), 1)


def scan_predictions(pairs, soft, num_classes, selector, batch_size, histogram):
  """Pass 1: feeds every prediction record to the selector (and the per-class confidence
  histogram of the report); returns the records per shard."""
  parse = _label_and_confidence(soft, num_classes)
  counts, total, start = [], 0, time.perf_counter()
  for index, pair in enumerate(pairs):
    count = 0
    try:
      for labels, confidences in _batches(pair.prediction, batch_size, parse):
        selector.add(labels, confidences, np.arange(total + count, total + count + len(labels)))
        _add_to_histogram(histogram, labels, confidences)
        count += len(labels)
        logging.log_every_n_seconds(logging.INFO, "filter pass 1: shard %d/%d, %.0f records/s",
                                    _LOG_EVERY_S, index + 1, len(pairs),
                                    (total + count) / (time.perf_counter() - start))
    except tf.errors.OpError as e:
      raise ValueError(f"cannot read prediction shard {pair.prediction}: {e.message}") from e
    if pair.count is not None and pair.count != count:
      raise ValueError(f"{pair.prediction} holds {count} records but {SUMMARY} lists "
                       f"{pair.count} for it (input {pair.unlabeled})")
    counts.append(count)
    total += count
  logging.info("filter pass 1: %d records from %d shards, %.0f records/s", total, len(pairs),
               total / max(time.perf_counter() - start, 1e-9))
  return counts


def output_shard_count(num_shards, num_inputs, num_records):
  requested = num_inputs if num_shards is None else int(num_shards)
  return max(1, min(requested, num_records))


def _write_training_shards(pairs, counts, selection, soft, output_dir, num_shards, seed,
                           batch_size, sample_ids=()):
  """Pass 2: joins, assigns, spills, shuffles and writes; returns the shard file names and
  {record id: its serialized training record} for the kept records `sample_ids` (the report's
  samples, taken as they are written rather than by reading the output again)."""
  num_shards = output_shard_count(num_shards, len(pairs), selection.num_records)
  names = [records.shard_name(SHARD_PREFIX, j, num_shards) for j in range(num_shards)]
  finals = [os.path.join(output_dir, name) for name in names]
  spills = [records.temporary_path(path) for path in finals]
  tf.io.gfile.makedirs(output_dir)
  bounds = np.searchsorted(selection.record_ids, np.cumsum([0] + counts))
  offsets = np.cumsum([0] + counts)
  writers, sampled = [], {}
  try:
    writers = [tf.io.TFRecordWriter(path) for path in spills]
    position, read, start = 0, 0, time.perf_counter()
    for index, pair in enumerate(pairs):
      kept = slice(bounds[index], bounds[index + 1])
      local_ids = selection.record_ids[kept] - offsets[index]
      copies = selection.copies[kept]
      targets = assign_shards(position, int(copies.sum()), num_shards, seed, index)
      position += len(targets)
      joined = joined_records(pair, local_ids, copies, soft, batch_size)
      # The record id of each record `joined` yields: kept records in order, each `copies` times.
      written_ids = np.repeat(selection.record_ids[kept], copies)
      wanted = np.isin(written_ids, sample_ids)
      for target, serialized, record_id, sample in zip(targets, joined, written_ids, wanted,
                                                       strict=True):
        writers[target].write(serialized)
        if sample:
          sampled[int(record_id)] = serialized
      read += counts[index]
      logging.log_every_n_seconds(logging.INFO, "filter pass 2: shard %d/%d, %.0f records/s",
                                  _LOG_EVERY_S, index + 1, len(pairs),
                                  read / (time.perf_counter() - start))
    for writer in writers:
      writer.close()
    for j, (spill, final) in enumerate(zip(spills, finals)):
      _shuffle_into(spill, final, np.random.default_rng([seed, SHUFFLE_TAG, j]))
    logging.info("filter pass 2: read %d records, wrote %d to %d shards, %.0f records/s", read,
                 position, num_shards, read / max(time.perf_counter() - start, 1e-9))
  finally:
    for writer in writers:
      writer.close()
    for spill in spills:
      if tf.io.gfile.exists(spill):
        tf.io.gfile.remove(spill)
  return names, sampled


def assign_shards(position, count, num_shards, seed, input_index):
  """Output shards of output records position..position+count-1 (one input shard's)."""
  residues = (position + np.arange(count)) % num_shards
  return np.random.default_rng([seed, ASSIGN_TAG, input_index]).permutation(residues)


def joined_records(pair, local_ids, copies, soft, batch_size):
  """Yields the serialized training records of one shard pair, copies included.

  Reads every record of both shards and checks keys and lengths, also after the last kept one.
  """
  prediction_features = _prediction_features(soft, with_key=True)
  image_features = {records.KEY: tf.io.FixedLenFeature([], tf.string),
                    records.ENCODED: tf.io.FixedLenFeature([], tf.string)}
  predicted = _batches(pair.prediction, batch_size,
                       lambda s: tf.io.parse_example(s, prediction_features))
  images = _batches(pair.unlabeled, batch_size, lambda s: tf.io.parse_example(s, image_features))
  start = 0
  try:
    for p, u in itertools.zip_longest(predicted, images):
      size = _check_batch_keys(pair, start, p, u)
      first, last = np.searchsorted(local_ids, [start, start + size])
      for i, n in zip(local_ids[first:last] - start, copies[first:last]):
        serialized = _training_example(p, u, int(i), soft)
        for _ in range(n):
          yield serialized
      start += size
  except tf.errors.OpError as e:
    raise ValueError(f"cannot read {pair.prediction} or {pair.unlabeled}: {e.message}") from e


def _check_batch_keys(pair, start, predicted, images):
  """Raises on the first record whose keys differ or that only one shard has; returns the size."""
  predicted_keys = predicted[records.KEY] if predicted is not None else np.zeros(0, object)
  image_keys = images[records.KEY] if images is not None else np.zeros(0, object)
  size = min(len(predicted_keys), len(image_keys))
  differ = np.flatnonzero(predicted_keys[:size] != image_keys[:size])
  if len(differ):
    i = differ[0]
    raise ValueError(f"record {start + i} of {pair.prediction} has key {predicted_keys[i]!r} but "
                     f"record {start + i} of {pair.unlabeled} has key {image_keys[i]!r}")
  if len(predicted_keys) != len(image_keys):
    longer, shorter = ((pair.prediction, pair.unlabeled) if len(predicted_keys) > size
                       else (pair.unlabeled, pair.prediction))
    raise ValueError(f"{shorter} ends at record {start + size} but {longer} has more records")
  return size


def _training_example(predicted, images, i, soft):
  soft_fields = ({"top_k_classes": predicted[records.TOP_K_CLASSES][i],
                  "top_k_probabilities": predicted[soft.field][i]} if soft.is_top_k
                 else {"probabilities": predicted[soft.field][i]})
  return records.make_example(key=images[records.KEY][i], image=images[records.ENCODED][i],
                              label=predicted[records.LABEL][i],
                              confidence=predicted[records.CONFIDENCE][i], **soft_fields)


def _shuffle_into(spill, final, rng, batch_size=4096):
  """Reads one spill file whole, permutes it and writes it under its final name."""
  batches = tf.data.TFRecordDataset(spill).batch(batch_size).as_numpy_iterator()
  serialized = np.concatenate(list(batches) or [np.zeros(0, object)])
  records.write_atomically(final, serialized[rng.permutation(len(serialized))])


def save_summaries(output_dir, pairs, counts, selection, soft, shard_names, class_names):
  """Writes manifest.json, drops shards only a previous run listed, then writes stats.json.

  stats.json comes last: its presence means the output directory is complete.
  """
  soft_label = "top_k" if soft.is_top_k else "probabilities"
  entry = {"num_examples": selection.num_records, "labeled": True,
           "class_counts": selection.with_copies.tolist(), "shards": shard_names,
           "source": {"type": "filter", "soft_label": soft_label}, "seed": selection.seed}
  manifest = {"class_names": list(class_names or []),
              "num_classes": selection.num_classes, "source": "filter",
              "splits": {SHARD_PREFIX: entry}}
  previous = manifest_lib.load_manifest(output_dir) or {}
  manifest_lib.save_manifest(output_dir, manifest)
  for name in set(previous.get("splits", {}).get(SHARD_PREFIX, {}).get("shards", [])) - set(
      shard_names):
    if tf.io.gfile.exists(os.path.join(output_dir, name)):
      tf.io.gfile.remove(os.path.join(output_dir, name))
  stats = selection.stats()
  if class_names:  # the per-class lists are in this order
    stats["class_names"] = list(class_names)
  stats.update(num_records_read=int(sum(counts)), num_records_written=selection.num_records,
               num_shards=len(shard_names), soft_label=soft_label,
               inputs=[{"prediction": p.prediction, "unlabeled": p.unlabeled, "count": n}
                       for p, n in zip(pairs, counts)])
  records.write_text_atomically(os.path.join(output_dir, STATS), json.dumps(stats, indent=2) + "\n")
  return stats


def count_selection(predictions, unlabeled_data, rule=filter_balance.FilterRule(), *,
                    num_classes=None, batch_size=1024):
  """The totals `filter_and_balance_phase` would write (stats.json's "totals": before and after
  the threshold, kept, with copies), from the same pass over the predictions, writing nothing:
  what `--dry_run` reports once predictions exist."""
  pairs, summary = _resolve_pairs(predictions, unlabeled_data)
  return _select(pairs, summary, rule, num_classes, batch_size)[2].stats()["totals"]


def _select(pairs, summary, rule, num_classes, batch_size):
  """Pass 1 over the paired prediction shards, their format and first keys checked: (soft-label
  format, class count, `filter_balance.Selection`, records per shard, confidence histogram)."""
  first_predictions = _first_records([pair.prediction for pair in pairs])
  soft = _soft_label_format(pairs, first_predictions)
  _check_first_keys(pairs, first_predictions)
  num_classes = _num_classes(num_classes, summary, soft)
  selector = filter_balance.Selector(num_classes, rule)
  histogram = np.zeros((num_classes, HISTOGRAM_BINS), np.int64)
  counts = scan_predictions(pairs, soft, num_classes, selector, batch_size, histogram)
  return soft, num_classes, selector.result(), counts, histogram
