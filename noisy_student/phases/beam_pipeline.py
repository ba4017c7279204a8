"""Predict and filter-and-balance as one Apache Beam pipeline (`pip install -r
requirements-beam.txt`), for unlabeled sets too large for one machine.

`run_beam` does what `predict.predict_phase` followed by `filter_phase.filter_and_balance_phase`
do, with the work spread over Beam workers, and writes the same files into OUTPUT/predict and
OUTPUT/filter (iterate's layout). Given the same inputs, seed and output shard count, the
prediction shards, training shards and stats.json have the same contents (stats.json's input
paths aside):

  unlabeled shards, in order of file name
   | _Predict     one prediction shard per input shard; the teacher is loaded once per worker
   | _Scan        per shard: filter_phase's pass 1 into a Selector (no duplication): the shard's
   |              counts, confidence histogram and N best records per class
   | Top.PerKey   per class: the N best by (confidence desc, record id asc)
   | _Balance     per class: filter_balance.filter_and_balance, so copies follow the same rule
   |              and the same seeds
   | _Join        per input shard: filter_phase's pass 2 (images joined, every key checked);
   |              output shards assigned as filter_phase assigns them
   | _WriteShard  per output shard: records in output order, permuted with filter_phase's seed,
   |              written atomically
   | _Finish      manifest.json, stats.json (last: it marks the directory complete), plots

Why the result is the single-machine one: the N best of the union of every shard's N best are
the N best overall; a class's copies depend only on its kept records in record-id order and the
seed. Record ids here are (shard index << 40) + record index, which orders records as the
filter's global numbering does without knowing the shard sizes first.

Files are read and written with tf.io.gfile (local paths, gs://), not Beam's I/O, so every
worker needs the project's code and TensorFlow: `--setup_file=setup.py` installs both on each
worker (see docs/scale.md for the runner options).
"""

import dataclasses
import json
import os
import time

from absl import logging
import apache_beam as beam
from apache_beam.options import pipeline_options
import numpy as np
import tensorflow as tf

from data import manifest as manifest_lib
from data import pipeline
from data import records
from noisy_student import checkpoints
from noisy_student import filter_balance
from noisy_student import package_path
# The per-shard passes and the output layout of the two phases are used as they are, module-private
# names included, so that this path cannot drift from the single-machine one.
# pylint: disable=protected-access
from noisy_student.phases import filter_phase
from noisy_student import plots
from noisy_student.phases import predict

PREDICT_DIR, FILTER_DIR = "predict", "filter"
DEFAULT_RUNNER = "FnApiRunner"
_INDEX_BITS = 40  # Records per shard < 2**40; shard index in the bits above.
_READ_BATCH = 1024  # Records per tf.data batch when the filter passes read shards.
_SELECTED = "selected"
_CLASSES = "classes"


def run_beam(checkpoint, unlabeled_data, output_dir, preprocess_config, config,
             rule=filter_balance.FilterRule(), *, num_shards=None, checkpoint_format="keras",
             model_args=None, num_classes=None, beam_options=()):
  """Runs predict then filter-and-balance as one Beam pipeline and waits for it.

  Args:
    checkpoint: the teacher, as `checkpoints.load_model` takes it; every worker reads it.
    unlabeled_data: directory with manifest.json or glob of unlabeled shards.
    output_dir: gets `predict/` (prediction shards, summary.json) and `filter/` (training
      shards, manifest.json, stats.json, plots). Prediction shards that exist are kept (a rerun
      resumes); the filter output is rewritten.
    preprocess_config: `data.preprocess.PreprocessConfig` (eval preprocessing).
    config: `predict.PredictConfig` with num_workers=1: the runner spreads the shards.
    rule, num_shards: as in `filter_phase.filter_and_balance_phase`.
    checkpoint_format, model_args: as in `checkpoints.load_model`.
    num_classes: C; None reads it from the teacher (loaded here once in any case).
    beam_options: Beam pipeline options such as ["--runner=DataflowRunner", "--project=p"];
      without --runner, Beam's in-process FnApiRunner.

  Returns:
    {"predict": the summary.json dict, "filter": the stats.json dict}.

  Raises:
    ValueError: bad arguments; and, from the workers, what the two phases raise.
  """
  if config.num_workers != 1:
    raise ValueError("num_workers/worker_index do not apply to Beam: the runner spreads shards")
  if num_shards is not None and int(num_shards) < 1:
    raise ValueError(f"num_shards must be >= 1 or None, got {num_shards!r}")
  load = dict(checkpoint=checkpoint, checkpoint_format=checkpoint_format, model_args=model_args,
              num_classes=num_classes, mixed_precision=config.mixed_precision)
  # Loaded here once, also to fail before any work on a bad checkpoint, and so that a rerun into
  # the same output keeps only prediction shards of the same teacher and settings.
  teacher = checkpoints.load_model(**load)
  if num_classes is None:
    num_classes = checkpoints.model_classes(teacher)
  shards = sorted(pipeline.resolve_shards(unlabeled_data), key=os.path.basename)
  if len(shards) >= 1 << (63 - _INDEX_BITS):
    raise ValueError(f"{len(shards)} shards: record ids hold at most 2**23")
  soft = filter_phase.SoftLabel(
      records.PROBABILITIES if config.top_k is None else records.TOP_K_PROBABILITIES,
      num_classes if config.top_k is None else min(config.top_k, num_classes))
  predict_dir = os.path.join(output_dir, PREDICT_DIR)
  filter_dir = os.path.join(output_dir, FILTER_DIR)
  predict.check_run_identity(predict_dir, predict.run_identity(teacher, preprocess_config, config))
  del teacher
  tf.io.gfile.makedirs(filter_dir)
  options = pipeline_options.PipelineOptions(list(beam_options))
  if options.view_as(pipeline_options.StandardOptions).runner is None:
    # DirectRunner would first try to download the Prism runner binary from GitHub.
    options.view_as(pipeline_options.StandardOptions).runner = DEFAULT_RUNNER
  setup = options.view_as(pipeline_options.SetupOptions)
  if setup.setup_file or setup.extra_packages:
    # Workers that pip-install the project import it from noisy_student_tf/ (package_path).
    setup.beam_plugins = [*(setup.beam_plugins or []), package_path.INSTALLED_NAME]
  with beam.Pipeline(options=options) as root:
    _build(root, shards, predict_dir, filter_dir, load, preprocess_config, config, soft,
           num_classes, rule, num_shards)
  return {"predict": _load_json(os.path.join(predict_dir, predict.summary_name(config))),
          "filter": _load_json(os.path.join(filter_dir, filter_phase.STATS))}


def _build(root, shards, predict_dir, filter_dir, load, preprocess_config, config, soft,
           num_classes, rule, num_shards):
  """Adds the pipeline's transforms to `root` (see the module docstring)."""
  predicted = (root | "Shards" >> beam.Create(list(enumerate(shards)))
               | "Predict" >> beam.ParDo(_Predict(load, preprocess_config, config, predict_dir)))
  summary = (predicted | "AllShards" >> beam.combiners.ToList()
             | "Summary" >> beam.Map(_write_summary, predict_dir, num_classes, config))
  pairs = predicted | "Pairs" >> beam.MapTuple(
      lambda index, entry, *_: (index, filter_phase.ShardPair(
          os.path.join(predict_dir, entry["output"]), entry["input"], entry["count"])))
  scanned = pairs | "Scan" >> beam.ParDo(_Scan(soft, num_classes, rule)).with_outputs(
      _SELECTED, main="counts")
  counts = scanned.counts | "AddCounts" >> beam.CombineGlobally(_add_counts)
  if rule.images_per_class is None:
    kept = scanned[_SELECTED]  # Balancing off: every valid record above the threshold.
    classes = root | "NoClasses" >> beam.Create([[]])
  else:
    balanced = (scanned[_SELECTED]
                | "TopPerClass" >> beam.combiners.Top.PerKey(rule.images_per_class)
                | "Balance" >> beam.ParDo(_Balance(num_classes, rule)).with_outputs(
                    _CLASSES, main="kept"))
    kept = balanced.kept
    classes = balanced[_CLASSES] | "AllClasses" >> beam.combiners.ToList()
  totals = (kept | "Copies" >> beam.MapTuple(lambda index, record: (index, record[1]))
            | "PerShard" >> beam.CombinePerKey(sum))
  written = ({"pair": pairs, "kept": kept} | "ByShard" >> beam.CoGroupByKey()
             | "Join" >> beam.ParDo(_Join(soft, num_shards, len(shards), rule.seed),
                                    totals=beam.pvalue.AsDict(totals))
             | "ByOutputShard" >> beam.GroupByKey()
             | "Write" >> beam.ParDo(_WriteShard(filter_dir, rule.seed)))
  _ = (root | "Once" >> beam.Create([None])
       | "Finish" >> beam.ParDo(
           _Finish(filter_dir, soft, num_classes, rule, num_shards),
           summary=beam.pvalue.AsSingleton(summary), pairs=beam.pvalue.AsList(pairs),
           counts=beam.pvalue.AsSingleton(counts), classes=beam.pvalue.AsSingleton(classes),
           totals=beam.pvalue.AsDict(totals), written=beam.pvalue.AsList(written)))


class _Predict(beam.DoFn):
  """(index, unlabeled shard) -> (index, summary entry, images predicted, seconds)."""

  def __init__(self, load, preprocess_config, config, predict_dir):
    self._load = load
    self._preprocess = preprocess_config
    self._config = config
    self._dir = predict_dir
    self._model = self._infer = self._progress = None

  def setup(self):
    self._model = checkpoints.load_model(**self._load)
    self._infer = predict.inference_step(self._model, self._config)
    self._progress = predict.Progress()

  def process(self, element):
    index, shard = element
    start, done = time.perf_counter(), self._progress.count
    entry = predict.predict_shard(self._infer, checkpoints.model_classes(self._model), shard,
                                  self._dir, self._preprocess, self._config, self._progress)
    yield index, entry, self._progress.count - done, time.perf_counter() - start


def _write_summary(rows, predict_dir, num_classes, config):
  """predict_phase's summary.json; the rate is per worker (images over summed shard times)."""
  rows = sorted(rows, key=lambda row: row[0])
  entries = [entry for _, entry, _, _ in rows]
  predicted, seconds = sum(row[2] for row in rows), sum(row[3] for row in rows)
  return predict.save_summary(predict_dir, entries, num_classes, config, predicted,
                              predicted / max(seconds, 1e-9), engine="beam")


class _Scan(beam.DoFn):
  """(index, pair) -> the shard's counts; tagged: its selected records.

  Selected records are (label, (confidence, -record id)) candidates for Top.PerKey, or with
  balancing off, (shard index, (record index, 1 copy)).
  """

  def __init__(self, soft, num_classes, rule):
    self._soft = soft
    self._num_classes = num_classes
    self._rule = dataclasses.replace(rule, duplicate=False)  # Copies are decided per class.

  def process(self, element):
    index, pair = element
    selector = filter_balance.Selector(self._num_classes, self._rule)
    num_classes = self._num_classes
    histogram = np.zeros((num_classes, filter_phase.HISTOGRAM_BINS), np.int64)
    filter_phase.scan_predictions([pair], self._soft, num_classes, selector, _READ_BATCH,
                                   histogram)  # Checks the count against summary.json's.
    selection = selector.result()
    yield {"before": selection.before_threshold, "after": selection.after_threshold,
           "invalid_probability": selection.invalid_probability,
           "invalid_label": selection.invalid_label, "histogram": histogram}
    first = index << _INDEX_BITS
    balance = self._rule.images_per_class is not None
    for local, label, confidence in zip(selection.record_ids.tolist(),
                                        selection.labels.tolist(),
                                        selection.confidences.tolist()):
      # Top keeps the largest: highest confidence, then the smallest record id.
      yield beam.pvalue.TaggedOutput(
          _SELECTED, (label, (confidence, -(first + local))) if balance else (index, (local, 1)))


def _add_counts(parts):
  """Sums the shards' counts (a CombineGlobally function: associative and commutative)."""
  total = None
  for part in parts:
    total = part if total is None else {name: total[name] + part[name] for name in part}
  return total


class _Balance(beam.DoFn):
  """(label, the class's N best) -> (shard index, (record index, copies)) per kept record;
  tagged: (label, kept, written with copies)."""

  def __init__(self, num_classes, rule):
    self._num_classes = num_classes
    self._rule = rule

  def process(self, element):
    label, best = element
    confidences = np.array([confidence for confidence, _ in best], np.float32)
    ids = -np.array([negated for _, negated in best], np.int64)
    selection = filter_balance.filter_and_balance(
        [(np.full(len(ids), label, np.int64), confidences, ids)],
        num_classes=self._num_classes, rule=self._rule)
    mask = (1 << _INDEX_BITS) - 1
    for record_id, copies in zip(selection.record_ids.tolist(), selection.copies.tolist()):
      yield record_id >> _INDEX_BITS, (record_id & mask, copies)
    yield beam.pvalue.TaggedOutput(_CLASSES, (label, int(selection.kept_unique[label]),
                                              int(selection.with_copies[label])))


class _Join(beam.DoFn):
  """(index, {pair, kept}) -> ((output shard, shard count), (output position, record)).

  Output positions number the written records in input order (shard, record, copy), as
  filter_phase numbers them, so `assign_shards` sends every record where it sends it there.
  """

  def __init__(self, soft, num_shards, num_inputs, seed):
    self._soft = soft
    self._num_shards = num_shards
    self._num_inputs = num_inputs
    self._seed = seed

  def process(self, element, totals):
    index, grouped = element
    (pair,) = grouped["pair"]
    kept = sorted(grouped["kept"])
    local_ids = np.array([local for local, _ in kept], np.int64)
    copies = np.array([n for _, n in kept], np.int64)
    start = sum(n for shard, n in totals.items() if shard < index)
    count = filter_phase.output_shard_count(self._num_shards, self._num_inputs,
                                             sum(totals.values()))
    targets = filter_phase.assign_shards(start, int(copies.sum()), count, self._seed, index)
    joined = filter_phase.joined_records(pair, local_ids, copies, self._soft, _READ_BATCH)
    for position, (target, serialized) in enumerate(zip(targets, joined, strict=True), start):
      yield (int(target), count), (position, serialized)


class _WriteShard(beam.DoFn):
  """((j, count), records) -> j, with shard j written as filter_phase writes it."""

  def __init__(self, filter_dir, seed):
    self._dir = filter_dir
    self._seed = seed

  def process(self, element):
    (j, count), rows = element
    rows = sorted(rows, key=lambda row: row[0])  # The grouping's order is the runner's.
    serialized = np.array([row[1] for row in rows], object)
    rng = np.random.default_rng([self._seed, filter_phase.SHUFFLE_TAG, j])
    records.write_atomically(
        os.path.join(self._dir, records.shard_name(filter_phase.SHARD_PREFIX, j, count)),
        serialized[rng.permutation(len(serialized))])
    yield j


class _Finish(beam.DoFn):
  """Writes the shards no record went to, manifest.json, stats.json and the plots, once."""

  def __init__(self, filter_dir, soft, num_classes, rule, num_shards):
    self._dir = filter_dir
    self._soft = soft
    self._num_classes = num_classes
    self._rule = rule
    self._num_shards = num_shards

  def process(self, _, summary, pairs, counts, classes, totals, written):
    del summary  # a side input only so that predict's summary.json is written first
    pairs = [pair for _, pair in sorted(pairs, key=lambda item: item[0])]
    count = filter_phase.output_shard_count(self._num_shards, len(pairs), sum(totals.values()))
    names = [records.shard_name(filter_phase.SHARD_PREFIX, j, count) for j in range(count)]
    for j in sorted(set(range(count)) - set(written)):  # Only when nothing was kept at all.
      records.write_atomically(os.path.join(self._dir, names[j]), [])
    selection = _counts_only_selection(counts, classes, self._num_classes, self._rule)
    if selection.empty_classes:
      logging.warning("filter: %d classes have no kept record and stay empty: %s",
                      len(selection.empty_classes), selection.empty_classes[:20])
    class_names = manifest_lib.class_names_for(pairs[0].unlabeled, self._num_classes)
    filter_phase.save_summaries(self._dir, pairs, [pair.count for pair in pairs], selection,
                                 self._soft, names, class_names)
    plots.confidence_histograms(counts["histogram"],
                                os.path.join(self._dir, "confidence_per_class.png"),
                                threshold=self._rule.threshold, class_names=class_names)
    plots.class_counts(selection.after_threshold, selection.with_copies,
                       os.path.join(self._dir, "class_counts.png"), class_names=class_names)
    yield names


def _counts_only_selection(counts, classes, num_classes, rule):
  """A Selection holding the combined per-class counts: the kept records themselves stay in the
  pipeline, and manifest.json and stats.json read only the counts."""
  kept = np.zeros(num_classes, np.int64)
  with_copies = np.zeros(num_classes, np.int64)
  if rule.images_per_class is None:
    kept[:] = with_copies[:] = counts["after"]
  for label, unique, total in classes:
    kept[label], with_copies[label] = unique, total
  none = np.zeros(0, np.int64)
  return filter_balance.Selection(
      record_ids=none, labels=none.astype(np.int32), confidences=none.astype(np.float32),
      copies=none.astype(np.int32), before_threshold=counts["before"],
      after_threshold=counts["after"], kept_unique=kept, with_copies=with_copies,
      invalid_probability=int(counts["invalid_probability"]),
      invalid_label=int(counts["invalid_label"]), threshold=rule.threshold,
      images_per_class=rule.images_per_class, duplicate=rule.duplicate, seed=rule.seed)


def _load_json(path):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
