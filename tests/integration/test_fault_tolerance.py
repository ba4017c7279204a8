"""Killed phases resume: predict, filter, train and iterate are killed with SIGKILL at seeded
points, run again with the same command, and compared with an uninterrupted run.

Each phase runs as `python main.py ...` in a subprocess. Kill points are markers the phase
writes (its first output, a backup, a temporary file) plus a seeded random delay; a run that
ends before its kill still counts (a kill after completion), but every phase has at least one
point that lands mid-run, which the test checks.
"""

import io
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

import efficientnet
import main
from data import pipeline
from data import records
from tests import bright_channel

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_MODEL = ["--small_image", "--image_size=16", "--width_coefficient=0.1",
              "--depth_coefficient=0.1"]
NUM_CLASSES = 3
PREDICT_SHARDS = 6
RUN_TIMEOUT_S = 600  # a loaded 2-core machine runs a tiny training in about 30 s


def _truncated_jpeg():
  buffer = io.BytesIO()
  Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buffer, format="JPEG")
  return buffer.getvalue()[:-40]


def _replace_image(shard, index, image):
  """Rewrites record `index` of `shard` with other image bytes, keeping its key."""
  serialized = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
  example = tf.train.Example.FromString(serialized[index])
  key = example.features.feature[records.KEY].bytes_list.value[0]
  serialized[index] = records.make_example(key=key, image=image)
  records.write_atomically(str(shard), serialized)
  return key.decode()


def _command(*args):
  return [sys.executable, str(ROOT / "main.py"), *args]


def _run_in_process(*args):
  """main.py in this process: the reference runs, where a second TensorFlow start would cost
  more time than the run."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


def _run(args, log):
  """Runs main.py to completion; its output goes to `log` (read on failure)."""
  with open(log, "w") as out:
    result = subprocess.run(_command(*args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                            timeout=RUN_TIMEOUT_S)
  assert result.returncode == 0, pathlib.Path(log).read_text()[-3000:]


def _run_and_kill(args, log, marker, delay_s=0.0):
  """Starts main.py, waits until `marker()` holds (polling: no fixed sleeps on a loaded machine),
  waits `delay_s` more, then SIGKILLs it. Returns True when the kill landed mid-run, False
  when the run had already finished (a kill after completion)."""
  with open(log, "w") as out:
    process = subprocess.Popen(_command(*args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
  try:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not marker() and process.poll() is None:
      assert time.monotonic() < deadline, f"no kill marker within {RUN_TIMEOUT_S} s"
      time.sleep(0.005)
    end_of_delay = time.monotonic() + delay_s
    while time.monotonic() < end_of_delay and process.poll() is None:
      time.sleep(0.005)
    if process.poll() is not None:
      assert process.returncode == 0, pathlib.Path(log).read_text()[-3000:]
      return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return True
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


def _exists(*paths):
  return lambda: any(path.exists() for path in paths)


def _appears(directory, pattern):
  return lambda: directory.is_dir() and any(directory.glob(pattern))


def _final_files(directory):
  """{name: bytes} of the files a reader may use: everything but hidden (temporary) files."""
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
          if p.is_file() and not p.name.startswith(".")}


def _assert_no_temporary_is_read(directory):
  """Temporaries a kill left behind (`.tmp-*`) are never picked up by a reader's glob."""
  finals = sorted(str(p) for p in directory.glob("*.tfrecord") if not p.name.startswith("."))
  assert pipeline.resolve_shards(str(directory / "*.tfrecord")) == finals


# predict.


@pytest.fixture(scope="module")
def predict_inputs(tmp_path_factory):
  """Unlabeled shards with one undecodable image, and a tiny untrained teacher."""
  root = tmp_path_factory.mktemp("predict")
  unlabeled = bright_channel.converted(root, "unlabeled", 72, 2, PREDICT_SHARDS, unlabeled=True)
  undecodable = _replace_image(pipeline.resolve_shards(str(unlabeled))[0], 2, _truncated_jpeg())
  model = efficientnet.build_model("efficientnet-b0", NUM_CLASSES, small_image=True,
                                   image_size=16, width_coefficient=0.1, depth_coefficient=0.1)
  model.save(root / "teacher.keras")
  return root, undecodable


def _predict_args(root, output):
  # batch 4: several batches per shard, so a shard takes a while to predict. (--image_size is
  # the size a run trains at: predict runs the model at the size it was built for, 16.)
  return ["--mode=predict", f"--checkpoint={root / 'teacher.keras'}", "--normalization=imagenet",
          f"--unlabeled_data={root / 'unlabeled'}", f"--output={output}",
          "--inference_batch_size=4", *[f for f in TINY_MODEL if not f.startswith("--image_size")]]


@pytest.fixture(scope="module")
def predict_reference(predict_inputs):
  root, _ = predict_inputs
  output = root / "uninterrupted"
  _run_in_process(*_predict_args(root, output))
  return output


def _assert_same_predictions(resumed, reference, undecodable):
  assert _final_files(resumed).keys() == _final_files(reference).keys()
  for name, data in _final_files(reference).items():
    if name.endswith(".tfrecord"):
      assert _final_files(resumed)[name] == data, name  # record for record, byte for byte
  summary = json.loads((resumed / "summary.json").read_text())
  expected = json.loads((reference / "summary.json").read_text())
  assert summary["images"] == expected["images"] == 72
  assert summary["undecodable"] == expected["undecodable"] == 1
  assert [k for e in summary["shards"] for k in e["undecodable_keys"]] == [undecodable]
  assert [(e["output"], e["count"]) for e in summary["shards"]] == [
      (e["output"], e["count"]) for e in expected["shards"]]
  _assert_no_temporary_is_read(resumed)


# Oracle: the same predict uninterrupted (two paths agree: killed and resumed = uninterrupted).
def test_predict_killed_after_its_first_shard_resumes_identically(predict_inputs,
                                                                  predict_reference, tmp_path):
  root, undecodable = predict_inputs
  output = tmp_path / "predict"
  args = _predict_args(root, output)
  assert _run_and_kill(args, tmp_path / "killed.log", _appears(output, "unlabeled-*"))
  assert not (output / "summary.json").exists()
  done = [p.name for p in output.glob("unlabeled-*")]
  assert 1 <= len(done) < PREDICT_SHARDS
  _run(args, tmp_path / "resumed.log")
  summary = json.loads((output / "summary.json").read_text())
  assert sorted(e["output"] for e in summary["shards"] if e.get("resumed")) == sorted(done)
  _assert_same_predictions(output, predict_reference, undecodable)


# Oracle: the same predict uninterrupted (two paths agree: killed and resumed = uninterrupted).
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_predict_killed_at_random_points_resumes_identically(predict_inputs, predict_reference,
                                                             tmp_path, seed):
  root, undecodable = predict_inputs
  rng = random.Random(seed)
  output = tmp_path / "predict"
  args = _predict_args(root, output)
  # Kill once k shards exist, plus up to half a second (k = 0: during startup); odd seeds kill
  # twice in a row before the run that finishes.
  for attempt in range(1 + seed % 2):
    shards_done = rng.randrange(PREDICT_SHARDS)
    marker = lambda k=shards_done: len(list(output.glob("unlabeled-*"))) >= k
    _run_and_kill(args, tmp_path / f"killed-{attempt}.log", marker, rng.uniform(0, 0.5))
  _run(args, tmp_path / "resumed.log")
  _assert_same_predictions(output, predict_reference, undecodable)


# filter.


FILTER_SHARDS = 8
FILTER_RECORDS_PER_SHARD = 3000  # enough that writing the output takes a moment to kill into


@pytest.fixture(scope="module")
def filter_inputs(tmp_path_factory):
  """Prediction shards, their unlabeled shards (image bytes are not decoded by the filter) and
  summary.json, as predict writes them, with a few NaN and negative soft labels."""
  root = tmp_path_factory.mktemp("filter")
  rng = np.random.default_rng(0)
  entries = []
  for sub in ("unlabeled", "predictions"):
    (root / sub).mkdir()
  for s in range(FILTER_SHARDS):
    name = records.shard_name("unlabeled", s, FILTER_SHARDS)
    probabilities = rng.dirichlet(np.full(NUM_CLASSES, 0.5), FILTER_RECORDS_PER_SHARD)
    probabilities[rng.choice(FILTER_RECORDS_PER_SHARD, 3), 0] = [np.nan, -0.5, np.nan]
    keys = [f"unlabeled/{s}/{i}" for i in range(FILTER_RECORDS_PER_SHARD)]
    records.write_atomically(str(root / "unlabeled" / name),
                             (records.make_example(key=k, image=k.encode()) for k in keys))
    records.write_atomically(str(root / "predictions" / name), (
        records.make_example(key=k, label=int(np.nanargmax(p)), probabilities=p,
                             confidence=float(np.nanmax(p)))
        for k, p in zip(keys, probabilities.astype(np.float32))))
    entries.append({"input": str(root / "unlabeled" / name), "output": name,
                    "count": FILTER_RECORDS_PER_SHARD})
  (root / "predictions" / "summary.json").write_text(
      json.dumps({"shards": entries, "num_classes": NUM_CLASSES}))
  output = root / "uninterrupted"
  _run(_filter_args(root, output), root / "uninterrupted.log")
  return root, output


def _filter_args(root, output):
  return ["--mode=filter", f"--predictions={root / 'predictions'}",
          f"--unlabeled_data={root / 'unlabeled' / '*.tfrecord'}", f"--output={output}",
          "--images_per_class=9000", "--confidence_threshold=0.4", "--num_shards=4", "--seed=5"]


# Oracle: the same filter uninterrupted (two paths agree: killed and rerun = uninterrupted).
@pytest.mark.slow
@pytest.mark.parametrize("kill_point", ["spill", "first_shard", "manifest", "stats", "random"])
def test_filter_killed_at_each_point_reruns_identically(filter_inputs, tmp_path, kill_point):
  root, reference = filter_inputs
  output = tmp_path / "filter"
  markers = {"spill": _appears(output, ".tmp-*"), "first_shard": _appears(output, "train-*"),
             "manifest": _exists(output / "manifest.json"),
             "stats": _exists(output / "stats.json"), "random": lambda: True}
  delay = random.Random(kill_point).uniform(4, 12) if kill_point == "random" else 0
  mid_run = _run_and_kill(_filter_args(root, output), tmp_path / "killed.log",
                          markers[kill_point], delay)
  if kill_point in ("spill", "first_shard"):
    assert mid_run and not (output / "stats.json").exists()
  _run(_filter_args(root, output), tmp_path / "rerun.log")
  assert _final_files(output).keys() == _final_files(reference).keys()
  for name, data in _final_files(reference).items():
    if not name.endswith(".png"):  # shards, manifest.json, stats.json
      assert _final_files(output)[name] == data, name
  stats = json.loads((output / "stats.json").read_text())
  assert stats["totals"]["invalid_probability"] == 3 * FILTER_SHARDS
  _assert_no_temporary_is_read(output)


# train.


@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  bright_channel.converted(root, "labeled", 48, 1, 2)
  reference = root / "uninterrupted"
  _run(_train_args(root, reference), root / "uninterrupted.log")
  return root, json.loads((reference / "history.json").read_text())


def _train_args(root, workdir):
  # 48 images in batches of 8: 6 steps a data epoch and a Keras epoch; 24 steps, 4 backups.
  return ["--mode=train", f"--labeled_data={root / 'labeled'}", f"--workdir={workdir}",
          "--eval_data=", "--train_steps=24", "--batch_size=8", "--warmup_epochs=0", "--seed=3",
          *TINY_MODEL]


# Oracle: the same train uninterrupted (two paths agree: killed and resumed = uninterrupted).
@pytest.mark.slow
@pytest.mark.parametrize("kill_point", ["first_backup", "while_saving_a_backup",
                                        "before_the_final_model"])
def test_train_killed_resumes_from_its_backup_to_the_same_final_step(train_inputs, tmp_path,
                                                                     kill_point):
  root, reference = train_inputs
  workdir = tmp_path / "train"
  backup = workdir / "backup"
  markers = {"first_backup": _exists(backup / "latest.weights.h5"),
             # The backup of a later Keras epoch being written (Keras' own BackupAndRestore
             # left a file no rerun could load when killed here).
             "while_saving_a_backup": lambda: (backup / "latest.weights.h5").exists() and any(
                 backup.glob(".tmp-*")),
             "before_the_final_model": _exists(workdir / "history.json")}
  delay = random.Random(kill_point).uniform(0, 1) if kill_point == "first_backup" else 0
  assert _run_and_kill(_train_args(root, workdir), tmp_path / "killed.log", markers[kill_point],
                       delay)
  assert not (workdir / "model.keras").exists()
  _run(_train_args(root, workdir), tmp_path / "resumed.log")
  history = json.loads((workdir / "history.json").read_text())
  keras_epochs = history["total_steps"] // history["steps_per_keras_epoch"]
  assert history["total_steps"] == reference["total_steps"] == 24
  assert history["optimizer_iterations"] == reference["optimizer_iterations"] == 24
  assert reference["initial_epoch"] == 0
  assert history["initial_epoch"] >= 1  # resumed from a backup, not from scratch
  assert len(history["history"].get("loss", [])) == keras_epochs - history["initial_epoch"]
  assert (workdir / "model.keras").exists() and not backup.exists()
  assert not list(workdir.glob(".tmp-*"))


# iterate.


@pytest.mark.slow
def test_iterate_resumes_at_the_phase_where_it_stopped(tmp_path):
  for split, n, seed in (("labeled", 48, 1), ("unlabeled", 72, 2), ("test", 30, 3)):
    bright_channel.converted(tmp_path, split, n, seed, 2, unlabeled=split == "unlabeled")
  workdir = tmp_path / "iterate"
  args = ["--mode=iterate", "--iterations=1", f"--workdir={workdir}",
          f"--labeled_data={tmp_path / 'labeled'}", f"--unlabeled_data={tmp_path / 'unlabeled'}",
          f"--eval_data={tmp_path / 'test'}", "--train_steps=6", "--batch_size=8",
          "--warmup_epochs=0", "--images_per_class=10", "--confidence_threshold=0", *TINY_MODEL]
  teacher = workdir / "iter_0" / "train"
  assert _run_and_kill(args, tmp_path / "killed.log", _exists(teacher / "DONE"))
  assert not (workdir / "summary.json").exists()
  before = {name: (teacher / name).stat().st_mtime_ns for name in ("DONE", "model.keras")}
  _run(args, tmp_path / "resumed.log")
  assert {name: (teacher / name).stat().st_mtime_ns for name in before} == before
  summary = json.loads((workdir / "summary.json").read_text())
  assert [r["role"] for r in summary["rounds"]] == ["teacher", "student"]
  for phase in ("predict", "filter", "train", "eval"):
    assert (workdir / "iter_1" / phase / "DONE").exists(), phase
