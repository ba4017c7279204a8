"""predict's table for people (`--predictions_format=jsonl|csv`) against an oracle: the prediction
TFRecords predict wrote, parsed here with protobuf (tests/conftest.py's `prediction_records`),
ranked here with plain Python, and the files of the folder they were converted from."""

import csv
import json
import math
import os

import keras
import numpy as np
import pytest
from absl import flags
from PIL import Image

import efficientnet
import main
from noisy_student.phases import prediction_table

NUM_CLASSES = 6
CLASS_NAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]
TOP_K = 5  # rows list the 5 most probable of the 6 classes
DECIMALS_ATOL = 1e-6  # the table rounds probabilities to 6 decimals: off by up to 5e-7


def run(*args):
  """main.py in this process, as tests/test_main.py runs it."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """An unlabeled folder tree (nested, names with spaces) as 3 shards, and a tiny model."""
  root = tmp_path_factory.mktemp("table")
  rng = np.random.default_rng(0)
  for index in range(14):
    folder = root / "images" / ("nested/deeper" if index % 3 else "top level")
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (rng.integers(20, 40), 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f"image {index}.png")
  run("--mode=convert", "--source=folder", f"--input={root / 'images'}", "--unlabeled",
      f"--output={root / 'unlabeled'}", "--split=unlabeled", "--num_shards=3")
  keras.utils.set_random_seed(0)
  model = efficientnet.build_model("efficientnet-b0", NUM_CLASSES, small_image=True,
                                   width_coefficient=0.1, depth_coefficient=0.1)
  head = model.get_layer("predictions")  # spread the untrained head's near-uniform outputs
  head.kernel.assign(np.random.default_rng(1).normal(0, 300, head.kernel.shape))
  model.save(root / "teacher.keras")
  return root


def _predict(root, output, *args):
  run("--mode=predict", f"--checkpoint={root / 'teacher.keras'}", "--normalization=imagenet",
      f"--unlabeled_data={root / 'unlabeled'}", f"--output={output}", *args)
  return json.loads((output / "summary.json").read_text()) if (output / "summary.json").exists() \
      else None


def _oracle(output, prediction_records, shard_names, top_k=None):
  """Per record, in shard order then record order: (key, class, confidence, [(class, p)...]), the
  ranking by probability, ties to the lower class, from the protobuf-parsed records."""
  rows = []
  for name in shard_names:
    fields = prediction_records(output / name)
    for i, key in enumerate(fields["image/key"]):
      if top_k:
        ranked = list(zip(fields["top_k_classes"][i], fields["top_k_probabilities"][i]))
      else:
        p = fields["probabilities"][i]
        ranked = [(c, p[c]) for c in sorted(range(NUM_CLASSES), key=lambda c: (-p[c], c))]
      rows.append((key[0].decode(), fields["image/class/label"][i][0],
                   fields["confidence"][i][0], ranked[:TOP_K]))
  return rows


def _no_nan(constant):
  raise ValueError(f"{constant} is not JSON")


def test_jsonl_rows_are_the_prediction_records_with_names_and_source_files(
    converted, tmp_path, prediction_records):
  output = tmp_path / "predict"
  summary = _predict(converted, output, "--predictions_format=jsonl",
                     f"--class_names={','.join(CLASS_NAMES)}")
  lines = (output / "predictions.jsonl").read_text().splitlines()
  rows = [json.loads(line, parse_constant=_no_nan) for line in lines]
  expected = _oracle(output, prediction_records, [e["output"] for e in summary["shards"]])
  assert len(rows) == len(expected) == 14
  assert len(summary["shards"]) == 3
  for row, (key, label, confidence, ranked) in zip(rows, expected):
    assert row["key"] == key
    # Keys of a folder conversion are "<split>/<path in the folder>": the path is the file.
    assert row["path"] == os.path.join(str(converted / "images"), key[len("unlabeled/"):])
    assert os.path.isfile(row["path"])
    assert row["class"] == label == ranked[0][0]
    assert row["class_name"] == CLASS_NAMES[label]
    assert math.isclose(row["confidence"], confidence, abs_tol=DECIMALS_ATOL)
    assert [t["class"] for t in row["top_k"]] == [c for c, _ in ranked]
    assert [t["class_name"] for t in row["top_k"]] == [CLASS_NAMES[c] for c, _ in ranked]
    np.testing.assert_allclose([t["probability"] for t in row["top_k"]],
                               [p for _, p in ranked], rtol=0, atol=DECIMALS_ATOL)
  assert len({row["class"] for row in rows}) > 1  # a test of something
  assert not list(output.glob(".tmp-*"))


def test_csv_with_top_k_lists_the_stored_classes(converted, tmp_path, prediction_records):
  output = tmp_path / "predict"
  summary = _predict(converted, output, "--predictions_format=csv", "--top_k=2")
  with open(output / "predictions.csv", newline="") as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == [
        "key", "path", "class", "class_name", "confidence", "top1_class", "top1_class_name",
        "top1_probability", "top2_class", "top2_class_name", "top2_probability"]
    rows = list(reader)
  expected = _oracle(output, prediction_records, [e["output"] for e in summary["shards"]],
                     top_k=2)
  assert len(rows) == len(expected) == 14
  for row, (key, label, confidence, ranked) in zip(rows, expected):
    assert (row["key"], int(row["class"])) == (key, label)
    assert row["class_name"] == str(label)  # no names: a .keras file without its train run
    assert math.isclose(float(row["confidence"]), confidence, abs_tol=DECIMALS_ATOL)
    for rank, (c, p) in enumerate(ranked, 1):
      assert (int(row[f"top{rank}_class"]), row[f"top{rank}_class_name"]) == (c, str(c))
      assert math.isclose(float(row[f"top{rank}_probability"]), p, abs_tol=DECIMALS_ATOL)


def test_workers_write_their_own_tables_and_filter_reads_past_them(converted, tmp_path):
  output = tmp_path / "predict"
  for worker in (0, 1):
    _predict(converted, output, "--predictions_format=jsonl", "--num_workers=2",
             f"--worker_index={worker}")
  single = tmp_path / "single"
  _predict(converted, single, "--predictions_format=jsonl")
  by_worker = [json.loads(line) for worker in (0, 1) for line in (
      output / f"predictions-0000{worker}-of-00002.jsonl").read_text().splitlines()]
  everything = [json.loads(line) for line in (single / "predictions.jsonl").read_text()
                .splitlines()]
  assert sorted(by_worker, key=lambda r: r["key"]) == sorted(everything, key=lambda r: r["key"])
  assert not (output / "predictions.jsonl").exists()
  # No summary.json (the workers write their own): filter lists the directory, and the tables
  # beside the shards are not shards.
  run("--mode=filter", f"--predictions={output}", f"--unlabeled_data={converted / 'unlabeled'}",
      f"--output={tmp_path / 'filter'}", "--confidence_threshold=0", "--nobalance",
      "--num_shards=1")
  stats = json.loads((tmp_path / "filter" / "stats.json").read_text())
  assert sum(stats["per_class"]["with_copies"]) == 14


def test_an_undecodable_image_has_an_empty_row():
  row = prediction_table.table_row("unlabeled/x.png", -1, float("nan"), [0, 0],
                                   [float("nan")] * 2, CLASS_NAMES)
  assert json.loads(json.dumps(row), parse_constant=_no_nan) == {
      "key": "unlabeled/x.png", "path": None, "class": None, "class_name": None,
      "confidence": None, "top_k": []}
  assert prediction_table.csv_values(row, 2) == ["unlabeled/x.png"] + [""] * 10


def test_the_flag_lists_the_formats_the_table_knows():
  assert tuple(flags.FLAGS["predictions_format"].parser.enum_values) == prediction_table.FORMATS
