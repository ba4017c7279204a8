"""predict's output as a table for people: predictions.jsonl or predictions.csv.

A step after predict: it reads back the prediction shards predict wrote (which stay the filter's
input, unchanged) and writes one row per record, in input order (the shards in this worker's
order, record i of a shard after record i-1):

  key          the image's key (image/key); for --source=folder data `<split>/<path in the folder>`
  path         the original file (convert's --input joined with that path) when the manifest
               beside the input shard says it was converted from a folder, else empty
  class        the predicted class (argmax), class_name its name
  confidence   its probability (at temperature 1, as stored)
  top_k        the TOP_K most probable classes, most probable first (ties: lower class first),
               each with its name and probability; with predict's --top_k the stored ones (fewer
               when k < TOP_K, float16 precision)

Probabilities are rounded to DECIMALS places. An image predict could not decode has an empty
class, name and confidence and no top classes. JSONL holds `top_k` as a list of
{"class", "class_name", "probability"}; CSV has columns top1_class, top1_class_name,
top1_probability, top2_class, ... instead.
"""

import csv
import json
import os

import numpy as np
import tensorflow as tf

from data import manifest as manifest_lib
from data import records

FORMATS = ("tfrecord", "jsonl", "csv")  # --predictions_format; tfrecord: the shards only
TOP_K = 5  # as the top-5 of eval's metrics
DECIMALS = 6
COLUMNS = ("key", "path", "class", "class_name", "confidence")


def table_name(fmt, num_workers=1, worker_index=0):
  """predictions.<fmt>, or one file per worker named like its summary JSON."""
  if num_workers == 1:
    return f"predictions.{fmt}"
  return f"predictions-{worker_index:05d}-of-{num_workers:05d}.{fmt}"


def table_row(key, label, confidence, top_classes, top_probabilities, class_names, path=None):
  """One row (module docstring) from a prediction record's fields; label -1 marks an image that
  did not decode."""
  if label < 0:
    return {"key": key, "path": path, "class": None, "class_name": None, "confidence": None,
            "top_k": []}
  return {"key": key, "path": path, "class": int(label), "class_name": class_names[label],
          "confidence": round(float(confidence), DECIMALS),
          "top_k": [{"class": int(c), "class_name": class_names[c],
                     "probability": round(float(p), DECIMALS)}
                    for c, p in zip(top_classes, top_probabilities)]}


def csv_header(top_k):
  return [*COLUMNS, *(f"top{rank}_{field}" for rank in range(1, top_k + 1)
                      for field in ("class", "class_name", "probability"))]


def csv_values(row, top_k):
  """A row's CSV cells (csv_header's columns); None is an empty cell."""
  cells = [row[column] for column in COLUMNS]
  for rank in range(top_k):
    entry = row["top_k"][rank] if rank < len(row["top_k"]) else {}
    cells.extend(entry.get(field) for field in ("class", "class_name", "probability"))
  return ["" if cell is None else cell for cell in cells]


def read_prediction_shard(path, num_classes, top_k=None):
  """Yields (key, label, confidence, top classes, their probabilities) of each record of a
  prediction shard, in order: at most TOP_K classes, most probable first."""
  width = top_k or num_classes
  spec = {records.KEY: tf.io.FixedLenFeature([], tf.string),
          records.LABEL: tf.io.FixedLenFeature([], tf.int64),
          records.CONFIDENCE: tf.io.FixedLenFeature([], tf.float32)}
  if top_k:
    spec[records.TOP_K_CLASSES] = tf.io.FixedLenFeature([width], tf.int64)
    spec[records.TOP_K_PROBABILITIES] = tf.io.FixedLenFeature([width], tf.float32)
  else:
    spec[records.PROBABILITIES] = tf.io.FixedLenFeature([width], tf.float32)
  rank = min(TOP_K, width)
  batches = tf.data.TFRecordDataset(path).batch(1024).map(lambda r: tf.io.parse_example(r, spec))
  for batch in batches.as_numpy_iterator():
    if top_k:  # stored most probable first (predict's stable sort)
      classes, probabilities = batch[records.TOP_K_CLASSES], batch[records.TOP_K_PROBABILITIES]
    else:
      probabilities = batch[records.PROBABILITIES]
      classes = np.argsort(-probabilities, axis=1, kind="stable")
      probabilities = np.take_along_axis(probabilities, classes, axis=1)
    yield from zip(batch[records.KEY], batch[records.LABEL], batch[records.CONFIDENCE],
                   classes[:, :rank], probabilities[:, :rank])


def source_path_function(input_shard):
  """key -> the original file of a record of `input_shard`, for shards converted from a folder
  (the manifest beside the shard says so: its split holding the shard has source type "folder");
  else key -> None."""
  manifest = manifest_lib.load_manifest(os.path.dirname(input_shard))
  name = os.path.basename(input_shard)
  for split, entry in (manifest or {}).get("splits", {}).items():
    if name not in [os.path.basename(shard) for shard in entry.get("shards", [])]:
      continue
    source = entry.get("source") or {}
    if source.get("type") != "folder":
      break
    # Keys are `<convert's split>/<path in the folder>`; a subset made by --labeled_per_class
    # keeps its source's keys under its own split name, so the prefix is not always `split`.
    def path(key, root=source["input"], prefix=f"{split}/"):
      relative = key[len(prefix):] if key.startswith(prefix) else key.split("/", 1)[-1]
      return os.path.join(root, relative)
    return path
  return lambda key: None


def prediction_rows(output_dir, summary, class_names):
  """Every row of the prediction shards `summary` (predict's, one worker's) lists, in order."""
  for entry in summary["shards"]:
    source_path = source_path_function(entry["input"])
    for key, label, confidence, classes, probabilities in read_prediction_shard(
        os.path.join(output_dir, entry["output"]), summary["num_classes"], summary["top_k"]):
      key = key.decode(errors="replace")
      yield table_row(key, label, confidence, classes, probabilities, class_names,
                      source_path(key))


def save_prediction_table(output_dir, summary, fmt, class_names):
  """Writes the table of `summary`'s prediction shards into `output_dir` (table_name), streamed
  row by row to a temporary file renamed when complete; returns its path.

  Args:
    output_dir: predict's output directory.
    summary: the summary predict_phase returned (this worker's shards).
    fmt: "jsonl" or "csv".
    class_names: one name per class of the model.
  """
  if fmt not in FORMATS[1:]:
    raise ValueError(f"--predictions_format must be one of {FORMATS[1:]} for a table, got {fmt!r}")
  num_classes = summary["num_classes"]
  if len(class_names) != num_classes:
    raise ValueError(f"--class_names names {len(class_names)} classes but the model has "
                     f"{num_classes}")
  top_k = min(TOP_K, summary["top_k"] or num_classes)
  path = os.path.join(output_dir, table_name(fmt, summary.get("num_workers", 1),
                                             summary.get("worker_index", 0)))
  rows = prediction_rows(output_dir, summary, class_names)
  with records.atomic_path(path) as tmp, tf.io.gfile.GFile(tmp, "w") as f:
    if fmt == "jsonl":
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
      writer = csv.writer(f, lineterminator="\n")
      writer.writerow(csv_header(top_k))
      writer.writerows(csv_values(row, top_k) for row in rows)
  return path
