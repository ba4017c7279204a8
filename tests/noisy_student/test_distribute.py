"""Several devices and workers: predict split over workers, MirroredStrategy over two logical
CPU devices, MultiWorkerMirroredStrategy with two local worker processes (train: only the chief
writes the run's outputs; iterate: predict split, filter and eval on the chief). TPUStrategy runs
the same code; README.md gives its command.

The oracle of a distributed run is the same run on one device: predictions record by record,
trained weights within a float tolerance."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import efficientnet
import main
from data import pipeline
from data import records
from noisy_student import distribute

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_MODEL = ["--small_image", "--image_size=16", "--width_coefficient=0.1",
              "--depth_coefficient=0.1"]
NUM_CLASSES = 3
RUN_TIMEOUT_S = 600

# Predict batches a worker's shards together: each worker's images are batched otherwise than in
# one worker's run, which reorders float32 sums (seen: up to 1.5e-7 on the probabilities with
# TF_ENABLE_ONEDNN_OPTS=0, none with oneDNN on this CPU). 1e-5 leaves room for other CPUs'
# kernels; the test checks that no two probabilities of an image are that close, so labels
# compare exactly.
PROBABILITY_ATOL = 1e-5
# Two replicas sum their gradients and batch statistics in another order than one device. Seen
# after 6 steps: up to 1e-6 on the trained weights, 8e-6 (1e-5 relative) on the recalibrated
# batch-norm variances, whose E[x^2] - E[x]^2 loses digits; 1e-2 with per-replica batch norm.
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5
# Training numerics without noise: dropout and stochastic depth masks are random draws per
# replica, which no other layout of the batch reproduces.
NO_NOISE = ["--dropout_rate=0", "--survival_prob=1"]

# main.py run once per argument list (JSON in argv[1]) in one process with two logical CPU
# devices, configured before TensorFlow initialises them; one process: one TensorFlow start.
TWO_CPUS_RUNS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from absl import flags
import main
for args in json.loads(sys.argv[1]):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])
"""


def run(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


def _files(directory, pattern):
  return {p.name: p.read_bytes() for p in directory.glob(pattern)}


def test_predict_workers_split_the_shards_without_overlap_or_gap(tmp_path, prediction_records,
                                                                 bright_channel_shards):
  unlabeled = bright_channel_shards(tmp_path, "unlabeled", 30, 2, num_shards=5, unlabeled=True)
  teacher = tmp_path / "teacher.keras"
  keras.utils.set_random_seed(0)  # the same teacher every run: the tie check below holds for it
  model = efficientnet.build_model("efficientnet-b0", NUM_CLASSES, small_image=True,
                                   image_size=16, width_coefficient=0.1, depth_coefficient=0.1)
  # Random weights give soft labels within 0.01 of uniform, some within noise of a tie; larger
  # logits spread them.
  model.get_layer("predictions").kernel.assign(model.get_layer("predictions").kernel * 300)
  model.save(teacher)
  common = ["--mode=predict", f"--checkpoint={teacher}", "--normalization=imagenet",
            f"--unlabeled_data={unlabeled}",
            "--batch_size=8", *TINY_MODEL]
  run(*common, f"--output={tmp_path / 'one'}")
  for index in range(3):  # three machines writing into one directory
    run(*common, f"--output={tmp_path / 'three'}", "--num_workers=3", f"--worker_index={index}")

  one = sorted(_files(tmp_path / "one", "unlabeled-*"))
  assert len(one) == 5 and sorted(_files(tmp_path / "three", "unlabeled-*")) == one
  for name in one:  # the same records in the same order, whichever worker wrote them
    want = prediction_records(tmp_path / "one" / name)
    got = prediction_records(tmp_path / "three" / name)
    assert sorted(got) == sorted(want) == sorted(
        [records.KEY, records.LABEL, records.PROBABILITIES, records.CONFIDENCE])
    assert got[records.KEY] == want[records.KEY] and got[records.LABEL] == want[records.LABEL]
    ranked = np.sort(want[records.PROBABILITIES], axis=1)
    assert np.diff(ranked, axis=1).min() > 2 * PROBABILITY_ATOL  # no label within noise of a tie
    for field in (records.PROBABILITIES, records.CONFIDENCE):
      np.testing.assert_allclose(got[field], want[field], rtol=0, atol=PROBABILITY_ATOL,
                                 err_msg=f"{name} {field}")
  shares = [json.loads((tmp_path / "three" / f"summary-{i:05d}-of-00003.json").read_text())
            for i in range(3)]
  names = [[entry["output"] for entry in share["shards"]] for share in shares]
  assert [len(n) for n in names] == [2, 2, 1]
  assert sorted(sum(names, [])) == one  # disjoint, and together every shard
  assert sum(share["images"] for share in shares) == 30

  # The filter reads the three workers' output as it reads the one worker's. Its cuts depend on
  # confidences, which may differ by float noise, so both get the same prediction records: the
  # three workers' summaries with the one worker's shards.
  for name in one:
    (tmp_path / "three" / name).write_bytes((tmp_path / "one" / name).read_bytes())
  for source in ("one", "three"):
    run("--mode=filter", f"--predictions={tmp_path / source}", f"--unlabeled_data={unlabeled}",
        f"--output={tmp_path / f'filtered_{source}'}", "--images_per_class=10", "--num_shards=2")
  filtered = [_files(tmp_path / f"filtered_{source}", "train-*") for source in ("one", "three")]
  assert filtered[0] == filtered[1] and len(filtered[0]) == 2


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, bright_channel_shards):
  return bright_channel_shards(tmp_path_factory.mktemp("data"), "labeled", 48, 1, num_shards=2)


def _train_args(labeled, workdir, strategy):
  return ["--mode=train", f"--strategy={strategy}", f"--labeled_data={labeled}",
          f"--workdir={workdir}", "--eval_data=", "--train_steps=6", "--batch_size=8",
          "--warmup_epochs=0", *TINY_MODEL]


def _check_finished(workdir):
  history = json.loads((workdir / "history.json").read_text())
  assert (workdir / "model.keras").exists() and not (workdir / "backup").exists()
  assert history["replicas"] == 2 and history["optimizer_iterations"] == 6
  return history


def _assert_same_weights(got_dir, want_dir):
  """The saved models of two train runs (EMA weights, recalibrated batch-norm statistics) agree
  within WEIGHT_RTOL and WEIGHT_ATOL, and training moved them far beyond that."""
  got, want = [{w.path: np.asarray(w) for w in
                keras.models.load_model(d / "model.keras", compile=False).weights}
               for d in (got_dir, want_dir)]
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_allclose(got[path], value, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, err_msg=path)
  # Train's starting weights (--seed=0, NO_NOISE: no dropout layers drawing seeds). Seen: the
  # trainable weights move by up to 9e-3 in 6 steps.
  keras.utils.set_random_seed(0)
  start = efficientnet.build_model("efficientnet-b0", NUM_CLASSES, small_image=True,
                                   image_size=16, width_coefficient=0.1, depth_coefficient=0.1,
                                   dropout_rate=0, survival_prob=1)
  moved = max(np.abs(want[w.path] - np.asarray(w)).max() for w in start.trainable_weights)
  assert moved > 100 * WEIGHT_ATOL


# In the default run: the only check of training numerics over several devices.
# Oracle: the project's one-device run (two paths agree: two replicas = one device); against a
# hand-made expectation: test_every_training_task_reads_its_own_part_of_the_input.
def test_mirrored_strategy_over_two_logical_cpus_equals_one_device(labeled, tmp_path):
  runs = [[*_train_args(labeled, tmp_path / strategy, strategy), *NO_NOISE]
          for strategy in ("mirrored", "cpu")]
  result = subprocess.run([sys.executable, "-c", TWO_CPUS_RUNS, json.dumps(runs)],
                          capture_output=True, text=True, cwd=ROOT, timeout=RUN_TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]
  _check_finished(tmp_path / "mirrored")
  _assert_same_weights(tmp_path / "mirrored", tmp_path / "cpu")


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(tmp_path, args, count=2, tag=""):
  """Starts main.py `args` as `count` local workers of one MultiWorkerMirroredStrategy cluster,
  each with its own TMPDIR; returns [(process, log file, log path)]."""
  cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(count)]}
  processes = []
  for index in range(count):
    (tmp_path / f"tmp{tag}{index}").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / f"tmp{tag}{index}"), TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    path = tmp_path / f"worker{tag}{index}.log"
    log = open(path, "w")  # pylint: disable=consider-using-with
    processes.append((subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env),
                      log, path))
  return processes


def _stop(processes):
  for process, log, _ in processes:
    if process.poll() is None:
      process.kill()
      process.wait()
    log.close()


def _run_workers(tmp_path, args, count=2, tag=""):
  """Runs main.py `args` as `count` local workers of one cluster (`_start_workers`); asserts
  that all succeed and returns their logs."""
  processes = _start_workers(tmp_path, args, count, tag)
  try:
    for process, log, path in processes:
      process.wait(timeout=RUN_TIMEOUT_S)
      log.close()
      assert process.returncode == 0, path.read_text()[-3000:]
  finally:
    _stop(processes)
  return [path.read_text() for _, _, path in processes]


def _rows_of_two_workers(labeled_dataset, rows_per_step):
  """A `pipeline.labeled_dataset` for a one-device run that trains on what two workers train on:
  under MultiWorkerMirroredStrategy each worker's replica takes the next `rows_per_step` rows of
  that worker's own stream (`num_workers=2`) at every step."""
  def rows(data, config, *, num_workers, worker_index, **kwargs):
    assert (num_workers, worker_index) == (1, 0)
    streams = [labeled_dataset(data, config, num_workers=2, worker_index=index,
                               **kwargs).batch(rows_per_step) for index in range(2)]
    return tf.data.Dataset.zip(*streams).map(
        lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0))).unbatch()
  return rows


# Run it (-m slow) before any Keras upgrade: Keras 3's fit needs workarounds under this strategy
# (train.py, _fit_under_multi_worker) that an upgrade may break.
# Oracle: the project's one-device run on the same rows (two paths agree: two workers = one).
# Slow (about 35 s): the default run's guard of training under a strategy is the Mirrored test.
@pytest.mark.slow
def test_multi_worker_strategy_with_two_local_workers_trains_and_only_the_chief_writes(
    labeled, tmp_path, monkeypatch):
  workdir = tmp_path / "multi_worker"
  _run_workers(tmp_path, [*_train_args(labeled, workdir, "multi_worker"), *NO_NOISE])
  _check_finished(workdir)
  # One writer, the chief: one TensorBoard event file; the other worker's outputs are gone.
  assert len(list((workdir / "tensorboard").rglob("events.out.tfevents.*"))) == 1
  assert not os.listdir(tmp_path / "tmp1")
  # The chief saved what one device trains on the same rows per step: 4 from each worker.
  monkeypatch.setattr(pipeline, "labeled_dataset",
                      _rows_of_two_workers(pipeline.labeled_dataset, 4))
  run(*_train_args(labeled, tmp_path / "one_device", "cpu"), *NO_NOISE)
  _assert_same_weights(workdir, tmp_path / "one_device")


# Slow (two clusters and a one-device run, about a minute).
# Oracle: the project's one-device run (two paths agree: killed, resumed workers = one device).
@pytest.mark.slow
def test_multi_worker_run_killed_and_resumed_trains_on_what_one_device_trains_on(
    labeled, tmp_path, monkeypatch):
  """Both workers SIGKILLed after the chief's first backup (step 6 of 12), then started again:
  each worker's stream resumes after the rows its replica took (4 a step, half the global batch
  of 8), not after a whole global batch of its own stream. Oracle: one device on the rows two
  uninterrupted workers take, as in the test above."""
  args = [*_train_args(labeled, tmp_path / "multi_worker", "multi_worker"), "--train_steps=12",
          *NO_NOISE]
  marker = tmp_path / "multi_worker" / "backup" / "latest.weights.h5"
  processes = _start_workers(tmp_path, args, tag="killed")
  try:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not marker.exists() and all(p.poll() is None for p, _, _ in processes):
      assert time.monotonic() < deadline, f"no {marker} within {RUN_TIMEOUT_S} s"
      time.sleep(0.005)
    assert all(p.poll() is None for p, _, _ in processes), processes[0][2].read_text()[-3000:]
  finally:
    _stop(processes)
  assert not (tmp_path / "multi_worker" / "model.keras").exists()
  logs = _run_workers(tmp_path, args, tag="resumed")
  assert "resumed at Keras epoch 1" in logs[0], logs[0][-3000:]
  history = json.loads((tmp_path / "multi_worker" / "history.json").read_text())
  assert history["initial_epoch"] == 1 and history["optimizer_iterations"] == 12
  monkeypatch.setattr(pipeline, "labeled_dataset",
                      _rows_of_two_workers(pipeline.labeled_dataset, 4))
  run(*_train_args(labeled, tmp_path / "one_device", "cpu"), "--train_steps=12", *NO_NOISE)
  _assert_same_weights(tmp_path / "multi_worker", tmp_path / "one_device")


# The only check of iterate's division of work between workers; slow (40 s): the default run
# keeps the multi-worker training test and predict's worker split.
@pytest.mark.slow
def test_iterate_under_multi_worker_splits_predict_and_leaves_the_rest_to_the_chief(
    labeled, tmp_path, bright_channel_shards):
  data = tmp_path / "data"
  data.mkdir()
  unlabeled = bright_channel_shards(data, "unlabeled", 40, 2, num_shards=4, unlabeled=True)
  test = bright_channel_shards(data, "test", 24, 3, num_shards=1)
  workdir = tmp_path / "iterate"
  logs = _run_workers(tmp_path, [
      "--mode=iterate", "--strategy=multi_worker", f"--labeled_data={labeled}",
      f"--unlabeled_data={unlabeled}", f"--eval_data={test}", f"--workdir={workdir}",
      "--iterations=1", "--train_steps=6", "--batch_size=8", "--warmup_epochs=0",
      "--confidence_threshold=0", "--images_per_class=20", *TINY_MODEL])
  # Predict: each worker took every other unlabeled shard, together all 40 images, once.
  predict_dir = workdir / "iter_1" / "predict"
  shares = [json.loads((predict_dir / f"summary-{i:05d}-of-00002.json").read_text())
            for i in range(2)]
  names = [sorted(entry["output"] for entry in share["shards"]) for share in shares]
  assert names == [[f"unlabeled-{i:05d}-of-00004.tfrecord" for i in (0, 2)],
                   [f"unlabeled-{i:05d}-of-00004.tfrecord" for i in (1, 3)]]
  assert all("predict: 20 images in 2 shards" in log for log in logs)
  # The chief combined the shares into the summary.json the filter reads.
  combined = json.loads((predict_dir / "summary.json").read_text())
  assert combined["images"] == 40 and combined["num_workers"] == 2
  assert [e["output"] for e in combined["shards"]] == sorted(sum(names, []))
  assert json.loads((predict_dir / "DONE").read_text()) == 40
  # Only the chief filtered; the other worker waited for its marks.
  assert "filter pass" in logs[0] and "filter pass" not in logs[1]
  assert "waits for the chief" not in logs[0] and "waits for the chief" in logs[1]
  for phase in ("iter_0/train", "iter_0/eval", "iter_1/filter", "iter_1/train", "iter_1/eval"):
    assert (workdir / phase / "DONE").exists(), phase
  kept = json.loads((workdir / "iter_1" / "filter" / "DONE").read_text())["totals"]
  assert kept["with_copies"] > 0
  # Both print the chief's table; the other worker left nothing in its temporary directory.
  summary = json.loads((workdir / "summary.json").read_text())
  assert [r["role"] for r in summary["rounds"]] == ["teacher", "student"]
  assert all(summary["table"][-1] in log for log in logs)
  assert not os.listdir(tmp_path / "tmp1")


@pytest.mark.parametrize("cluster,task,expected", [
    ({"worker": ["a", "b"]}, ("worker", 1), (2, 1)),
    ({"chief": ["c"], "worker": ["a", "b"]}, ("chief", 0), (3, 0)),
    ({"chief": ["c"], "worker": ["a", "b"]}, ("worker", 0), (3, 1)),
    ({"chief": ["c"], "worker": ["a", "b"]}, ("worker", 1), (3, 2)),
])
def test_every_training_task_reads_its_own_part_of_the_input(cluster, task, expected):
  """A TF_CONFIG with a separate chief: chief and workers each get a distinct input index."""
  assert distribute.input_split(cluster, *task) == expected
  indices = {distribute.input_split(cluster, t, i)[1]
             for t in ("chief", "worker") for i in range(len(cluster.get(t, [])))}
  assert indices == set(range(expected[0]))  # no overlap, no gap


def test_parameter_server_tasks_do_not_train():
  with pytest.raises(ValueError, match="'ps'"):
    distribute.input_split({"worker": ["a"], "ps": ["p"]}, "ps", 0)


# Dropout under MirroredStrategy over two logical CPUs, one process (devices are configured
# before TensorFlow initialises them). Prints JSON: each replica's output for the same input.
DROPOUT_REPLICAS = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from efficientnet import blocks
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
inputs = tf.ones([64, 2, 2, 8])
found = {}
for name, make in (("keras", keras.layers.Dropout), ("ours", blocks.Dropout)):
  for kind, noise_shape in (("dropout", None), ("stochastic_depth", (None, 1, 1, 1))):
    with strategy.scope():
      layer = make(0.5, noise_shape=noise_shape, seed=7)
    step = tf.function(lambda: layer(inputs, training=True))
    outputs = strategy.experimental_local_results(strategy.run(step))
    found[f"{name}/{kind}"] = [np.asarray(o).tolist() for o in outputs]
print(json.dumps(found))
"""


def test_dropout_draws_its_own_masks_on_each_replica():
  """The student's noise under MirroredStrategy (and TPUStrategy, the same code): Keras' Dropout
  drops the same rows on every replica (its seed generator is mirrored); the model's Dropout
  (dropout and stochastic depth) draws each replica's own, each at the layer's rate, kept values
  scaled by 1/(1 - rate). On one device it is Keras' layer to the bit."""
  result = subprocess.run([sys.executable, "-c", DROPOUT_REPLICAS], capture_output=True,
                          text=True, cwd=ROOT, timeout=RUN_TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout.splitlines()[-1])
  found = {name: [np.array(o) for o in outputs] for name, outputs in printed.items()}
  for kind in ("dropout", "stochastic_depth"):
    same, own = found[f"keras/{kind}"], found[f"ours/{kind}"]
    np.testing.assert_array_equal(same[0], same[1])  # the fault
    assert not np.array_equal(own[0], own[1])
    for output in own:
      assert set(np.unique(output)) <= {0.0, 2.0}
      # 64 rows (stochastic depth) or 2,048 values: a rate this far from 0.5 has probability
      # below 1e-4 (binomial).
      rate = (output == 0).mean()
      assert abs(rate - 0.5) < (0.25 if kind == "stochastic_depth" else 0.05), rate
      if kind == "stochastic_depth":  # one draw per example
        assert all(len(np.unique(row)) == 1 for row in output)
  inputs = np.random.default_rng(0).normal(size=(16, 2, 2, 8)).astype("float32")
  for noise_shape in (None, (None, 1, 1, 1)):
    ours = efficientnet.blocks.Dropout(0.3, noise_shape=noise_shape, seed=5)
    theirs = keras.layers.Dropout(0.3, noise_shape=noise_shape, seed=5)
    for _ in range(2):  # the generators advance alike
      np.testing.assert_array_equal(ours(inputs, training=True), theirs(inputs, training=True))
    np.testing.assert_array_equal(ours(inputs), inputs)


def test_jit_compile_defaults_to_the_device():
  assert distribute.jit_compile(None) == bool(tf.config.list_logical_devices("GPU"))
  assert distribute.jit_compile(True) is True and distribute.jit_compile(False) is False
