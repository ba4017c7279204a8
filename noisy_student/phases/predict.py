"""The predict phase: the teacher, unnoised, over unlabeled shards -> prediction shards.

Probabilities are stored at temperature 1, as the reference stores them: the filter's confidence
threshold sees the teacher's own confidence, and a student's --temperature is applied when it
trains (data.pipeline.pseudo_labeled_dataset), so one prediction serves students at any T.

One prediction shard per unlabeled shard, with the same file name, written atomically; a shard
whose output exists is finished and skipped on rerun, so a killed run resumes where it stopped.
Shards are split across machines with num_workers/worker_index (every num_workers-th shard).
"""

import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from data import pipeline
from data import records
from noisy_student import distribute
from noisy_student import inference


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """Attributes:
    top_k: None stores all C probabilities; k stores the k largest (float16), for 1000+ classes.
    batch_size: images per inference batch (--inference_batch_size).
    num_workers, worker_index: this process handles shards worker_index, worker_index + n, ...
    jit_compile: XLA for the inference step (None: on for GPUs and TPUs).
    mixed_precision: compute dtype the teacher is loaded with ("none", "bfloat16", "float16");
      logits and stored probabilities stay float32.
  """
  top_k: int | None = None
  batch_size: int = inference.BATCH_SIZE
  num_workers: int = 1
  worker_index: int = 0
  jit_compile: bool | None = None
  mixed_precision: str = "none"

  def __post_init__(self):
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"--top_k must be >= 1, got {self.top_k}")
    if self.batch_size < 1:
      raise ValueError(f"--inference_batch_size must be >= 1, got {self.batch_size}")
    if self.mixed_precision not in distribute.PRECISION_POLICIES:
      raise ValueError(f"--mixed_precision must be one of {tuple(distribute.PRECISION_POLICIES)}"
                       f", got {self.mixed_precision!r}")
    if not 0 <= self.worker_index < self.num_workers:
      raise ValueError(f"--worker_index={self.worker_index} is not in [0, {self.num_workers})")


def soft_labels(logits):
  """softmax(logits) in float64 before the final cast, so rows sum to 1 within float32."""
  scaled = np.asarray(logits, np.float64)
  scaled -= scaled.max(axis=1, keepdims=True)
  probabilities = np.exp(scaled)
  return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


def prediction_record(key, probabilities, top_k=None):
  """One serialized prediction record (schema in data/records.py)."""
  label = int(probabilities.argmax())
  if top_k is None:
    return records.make_example(key=key, label=label, probabilities=probabilities,
                                confidence=probabilities[label])
  top = np.argsort(-probabilities, kind="stable")[:top_k]
  return records.make_example(key=key, label=label, top_k_classes=top,
                              top_k_probabilities=probabilities[top],
                              confidence=probabilities[label])


def undecodable_record(key, num_classes, top_k=None):
  """The placeholder for an input record whose image does not decode: NaN confidence and soft
  label, so that record i of a prediction shard stays record i of its input shard and the filter
  counts it as invalid instead of misaligning everything after it."""
  width = top_k or num_classes
  nan = np.full(width, np.nan, np.float32)
  if top_k is None:
    return records.make_example(key=key, label=-1, probabilities=nan, confidence=np.nan)
  return records.make_example(key=key, label=-1, top_k_classes=np.zeros(width, np.int64),
                              top_k_probabilities=nan, confidence=np.nan)


def _input_keys(shard):
  """The key of every record of `shard`, in order.

  A damaged shard (truncated, bad checksum) is an error naming it, raised before any of its
  predictions is written: the readers would predict its readable records, but the filter reads
  it whole and could not pair them.
  """
  spec = {records.KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
  # Parsed a batch at a time: one record at a time cost a fifth of predict's time.
  keys = tf.data.TFRecordDataset(shard).batch(4096).map(
      lambda r: tf.io.parse_example(r, spec)[records.KEY])
  found = []
  try:
    for batch in keys.as_numpy_iterator():
      found.extend(batch)
  except tf.errors.OpError as e:
    readable = 0  # Counted one by one: the failing batch hides where the damage starts.
    try:
      for _ in tf.data.TFRecordDataset(shard):
        readable += 1
    except tf.errors.OpError:
      pass
    raise ValueError(f"cannot read {shard} past record {readable} "
                     f"({e.message.splitlines()[0]}); convert it again or leave it out") from e
  return found


def _existing_counts(path):
  """(records, keys of undecodable placeholders) of a prediction shard a previous run finished."""
  spec = {records.KEY: tf.io.FixedLenFeature([], tf.string),
          records.LABEL: tf.io.FixedLenFeature([], tf.int64)}
  count, undecodable = 0, []
  for serialized in tf.data.TFRecordDataset(path).batch(1024):
    parsed = tf.io.parse_example(serialized, spec)
    count += len(parsed[records.LABEL])
    undecodable.extend(k.decode(errors="replace")
                       for k in parsed[records.KEY][parsed[records.LABEL] == -1].numpy())
  return count, undecodable


def inference_step(model, config, strategy=None):
  """The teacher's `inference.InferenceStep` for `config`: made once per run (a new one per shard
  would trace the model again for every shard)."""
  return inference.InferenceStep(model, config.batch_size, strategy=strategy,
                                 jit_compile=distribute.jit_compile(config.jit_compile, strategy))


def _predicted_rows(infer, dataset, progress):
  """(shard index, key, soft label) of every image of `dataset`, in its order."""
  for indices, keys, images in dataset:
    probabilities = soft_labels(infer(images))
    progress.add(len(probabilities))
    yield from zip(indices.numpy(), keys.numpy(), probabilities)


def _shard_records(rows, expected_keys, num_classes, shard, top_k, skipped):
  """Prediction records of one shard in input order, from its (key, soft label) rows; records
  whose image did not decode (absent from `rows`) get placeholders."""
  expected = iter(expected_keys)
  for key, probabilities in rows:
    for missing in expected:
      if missing == key:
        break
      skipped.append(missing.decode(errors="replace"))
      yield undecodable_record(missing, num_classes, top_k)
    else:
      raise RuntimeError(f"predict: key {key!r} is out of order in {shard}")
    yield prediction_record(key, probabilities, top_k)
  for missing in expected:
    skipped.append(missing.decode(errors="replace"))
    yield undecodable_record(missing, num_classes, top_k)


def _predict_shards(infer, num_classes, shards, output_dir, preprocess_config, config, progress):
  """Writes the prediction shard of each of `shards` (same file name) from one input stream;
  returns their summary entries."""
  dataset = pipeline.predict_dataset(shards, preprocess_config, batch_size=config.batch_size)
  by_shard = itertools.groupby(_predicted_rows(infer, dataset, progress),
                               key=lambda row: row[0])
  group = next(by_shard, None)
  entries = []
  # The next shard's keys are read while this one is predicted: serially, they cost 2-3% of
  # predict's time at 224x224.
  with concurrent.futures.ThreadPoolExecutor(1) as key_reader:
    keys = key_reader.submit(_input_keys, shards[0])
    for index, shard in enumerate(shards):
      expected = keys.result()
      if index + 1 < len(shards):
        keys = key_reader.submit(_input_keys, shards[index + 1])
      has_rows = group is not None and group[0] == index  # None when no image of it decodes
      rows = ((key, probabilities) for _, key, probabilities in group[1]) if has_rows else ()
      skipped = []
      count = records.write_atomically(
          os.path.join(output_dir, os.path.basename(shard)),
          _shard_records(rows, expected, num_classes, shard, config.top_k, skipped))
      if has_rows:
        group = next(by_shard, None)
      if skipped:
        logging.warning("predict: %d undecodable images in %s (e.g. key %s), marked invalid",
                        len(skipped), shard, skipped[0])
      entries.append({"input": shard, "output": os.path.basename(shard), "count": count,
                      "undecodable": len(skipped), "undecodable_keys": skipped[:100]})
  return entries


class Progress:
  """A plain rate line every `every` seconds: long runs show they are alive and how fast."""

  def __init__(self, every=10.0):
    self.start = self.last = time.perf_counter()
    self.count = 0
    self.every = every

  def add(self, n):
    self.count += n
    now = time.perf_counter()
    if now - self.last >= self.every:
      self.last = now
      logging.info("predict: %d images, %.1f images/s", self.count, self.rate)

  @property
  def rate(self):
    return self.count / max(time.perf_counter() - self.start, 1e-9)


def summary_name(config):
  if config.num_workers == 1:
    return "summary.json"
  return f"summary-{config.worker_index:05d}-of-{config.num_workers:05d}.json"


RUN_IDENTITY = "predict_run.json"


def run_identity(model, preprocess_config, config):
  """What prediction shards depend on besides their input shard: the teacher's weights (a cheap
  fingerprint: per variable its path, shape, float64 sum and first values), the preprocessing,
  and top-k. JSON-ready."""
  digest = hashlib.sha256()
  for weight in model.weights:
    values = np.asarray(weight)
    digest.update(f"{weight.path}{values.shape}{values.sum(dtype=np.float64)!r}".encode())
    digest.update(values.reshape(-1)[:16].tobytes())
  identity = {"teacher": digest.hexdigest()[:20], "num_classes": int(model.output.shape[-1]),
              "top_k": config.top_k, "preprocess": dataclasses.asdict(preprocess_config)}
  return json.loads(json.dumps(identity))  # as it reads back from the file


def check_run_identity(output_dir, identity):
  """Records `identity` in `output_dir`, or checks it against the one recorded there.

  A rerun keeps the prediction shards it finds: they must come from the same teacher and
  settings. Workers of one run write the same identity.

  Raises:
    ValueError: the directory holds predictions made otherwise.
  """
  path = os.path.join(output_dir, RUN_IDENTITY)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      recorded = json.load(f)
    differs = sorted(k for k in set(identity) | set(recorded)
                     if identity.get(k) != recorded.get(k))
    if differs:
      raise ValueError(f"{output_dir} holds predictions of another run (other {', '.join(differs)}:"
                       f" see {RUN_IDENTITY}); predict into a new --output, or remove it")
    return
  tf.io.gfile.makedirs(output_dir)
  records.write_text_atomically(path, json.dumps(identity, indent=1) + "\n")


def _finished_entry(shard, output_dir):
  """The summary entry of a prediction shard a previous run finished, or None."""
  name = os.path.basename(shard)
  output = os.path.join(output_dir, name)
  if not tf.io.gfile.exists(output):  # Only ever complete: written to a temporary, then renamed.
    return None
  # Its undecodable count too: a resumed run's summary reports the same totals.
  count, skipped = _existing_counts(output)
  logging.info("predict: %s exists, skipped", output)
  return {"input": shard, "output": name, "count": count, "undecodable": len(skipped),
          "undecodable_keys": skipped[:100], "resumed": True}


def predict_shard(infer, num_classes, shard, output_dir, preprocess_config, config, progress):
  """Writes the prediction shard of one unlabeled shard (same file name) unless a previous run
  finished it; returns its summary entry."""
  return _finished_entry(shard, output_dir) or _predict_shards(
      infer, num_classes, [shard], output_dir, preprocess_config, config, progress)[0]


def save_summary(output_dir, entries, num_classes, config, predicted_now, rate, **extra):
  """Writes this worker's summary JSON (the filter reads its shard list and counts)."""
  summary = {
      "num_classes": num_classes, "top_k": config.top_k,
      "num_workers": config.num_workers, "worker_index": config.worker_index,
      "shards": entries, "images": sum(e["count"] for e in entries),
      "images_predicted_now": predicted_now,
      "undecodable": sum(e.get("undecodable", 0) for e in entries),
      "images_per_second": round(rate, 2), **extra,
  }
  records.write_text_atomically(os.path.join(output_dir, summary_name(config)),
                                json.dumps(summary, indent=1) + "\n")
  return summary


def worker_summary_paths(output_dir, num_workers):
  """The summary JSON path of each of `num_workers` workers in `output_dir`."""
  return [os.path.join(output_dir, summary_name(PredictConfig(num_workers=num_workers,
                                                              worker_index=index)))
          for index in range(num_workers)]


def combine_worker_summaries(output_dir, num_workers):
  """Writes the summary.json of `num_workers` workers' shares (`worker_summary_paths`, which
  must all exist) with every shard in it, as one worker would have; returns it."""
  shares = []
  for path in worker_summary_paths(output_dir, num_workers):
    with tf.io.gfile.GFile(path) as f:
      shares.append(json.load(f))
  summary = {key: shares[0][key] for key in ("num_classes", "top_k", "class_names")
             if key in shares[0]}
  summary["num_workers"] = num_workers
  summary["shards"] = sorted((e for share in shares for e in share["shards"]),
                             key=lambda entry: entry["output"])
  for key in ("images", "images_predicted_now", "undecodable"):
    summary[key] = sum(share[key] for share in shares)
  # The workers ran side by side: their rates add up.
  summary["images_per_second"] = round(sum(share["images_per_second"] for share in shares), 2)
  records.write_text_atomically(os.path.join(output_dir, summary_name(PredictConfig())),
                                json.dumps(summary, indent=1) + "\n")
  return summary


def predict_phase(model, unlabeled_data, output_dir, preprocess_config, config, strategy=None,
                  class_names=None):
  """Writes one prediction shard per unlabeled shard of this worker, then a summary JSON.

  Args:
    model: the teacher (EMA weights), from `checkpoints.load_model`; run in inference mode.
    unlabeled_data: directory with manifest.json or glob of unlabeled shards.
    output_dir: where prediction shards (same file names as the inputs) and the summary go.
    preprocess_config: `data.preprocess.PreprocessConfig`; only eval preprocessing is used.
    config: `PredictConfig` (its mixed_precision is the loader's: `model` runs as it is).
    strategy: the tf.distribute strategy `model` was loaded under (default: the current one);
      each batch is split over its replicas.
    class_names: the teacher's classes' names, recorded in the summary: the filter names its
      reports by them (unlabeled data has no names of its own).

  Returns:
    The summary dict (also written to `output_dir/summary*.json`).
  """
  shards = pipeline.worker_shards(pipeline.resolve_shards(unlabeled_data), config.num_workers,
                                  config.worker_index)
  check_run_identity(output_dir, run_identity(model, preprocess_config, config))
  infer, num_classes = inference_step(model, config, strategy), int(model.output.shape[-1])
  progress = Progress()
  entries = {shard: _finished_entry(shard, output_dir) for shard in shards}
  todo = [shard for shard in shards if entries[shard] is None]
  if todo:
    entries.update(zip(todo, _predict_shards(infer, num_classes, todo, output_dir,
                                             preprocess_config, config, progress)))
  entries = [entries[shard] for shard in shards]
  names = {"class_names": list(class_names)} if class_names else {}
  summary = save_summary(output_dir, entries, num_classes, config, progress.count,
                         progress.rate, **names)
  logging.info("predict: %d images in %d shards, %.1f images/s", summary["images"], len(entries),
               progress.rate)
  return summary
