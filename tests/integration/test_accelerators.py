"""Accelerator paths checked on the CPU: XLA (--jit_compile) for training, predict and eval;
predict and eval under a MirroredStrategy of two logical CPU devices; mixed precision in every
mode that runs the model; the static shapes a TPU needs; a GPU or TPU asked for and absent.

Each is compared with the plain path (float32, no XLA, one device) run on the same inputs: XLA
and another device layout sum in another order, so floats agree within stated tolerances and
labels, keys and counts exactly.
"""

import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import main
from data import records

ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY_FLAGS = ["--small_image", "--image_size=16", "--width_coefficient=0.1",
              "--depth_coefficient=0.1"]
# XLA fuses and reorders float32 sums: seen up to 3e-7 on these probabilities and 2e-6 on the
# weights after 6 steps.
XLA_ATOL = 1e-5
# bfloat16 keeps 8 bits of mantissa: activations carry ~0.4% relative error each layer. Seen:
# probabilities within 2e-2 of float32's on this model.
BFLOAT16_ATOL = 5e-2


def run(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


@pytest.fixture(scope="module")
def data(accelerator_inputs):
  return accelerator_inputs


def _predict_and_eval(data, name, *extra):
  """main.py's predict and eval of the teacher with `extra` flags -> (records by shard, metrics)."""
  out = data["root"] / name
  common = [f"--checkpoint={data['teacher']}", "--normalization=imagenet",
            "--inference_batch_size=8", *TINY_FLAGS, *extra]
  run("--mode=predict", *common, f"--unlabeled_data={data['unlabeled']}",
      f"--output={out / 'predict'}")
  run("--mode=eval", *common, f"--eval_data={data['eval']}", f"--output={out / 'eval'}")
  return out


def _records(directory, prediction_records):
  return {p.name: prediction_records(p) for p in sorted(directory.glob("unlabeled-*"))}


def _assert_same_predictions(got_dir, want_dir, prediction_records, atol):
  got, want = (_records(d / "predict", prediction_records) for d in (got_dir, want_dir))
  assert sorted(got) == sorted(want) and len(want) == 2
  for name, rows in want.items():
    assert got[name][records.KEY] == rows[records.KEY]
    assert got[name][records.LABEL] == rows[records.LABEL], name
    np.testing.assert_allclose(got[name][records.PROBABILITIES], rows[records.PROBABILITIES],
                               rtol=0, atol=atol, err_msg=name)
  metrics = [json.loads((d / "eval" / "metrics.json").read_text()) for d in (got_dir, want_dir)]
  assert metrics[0]["num_examples"] == metrics[1]["num_examples"] == 19
  assert metrics[0]["top1"] == metrics[1]["top1"]
  assert metrics[0]["loss"] == pytest.approx(metrics[1]["loss"], abs=atol * 10)


# Oracle: the project's plain path (two paths agree: XLA = no XLA).
def test_jit_compiled_predict_and_eval_equal_the_uncompiled(data, prediction_records):
  plain = _predict_and_eval(data, "plain", "--nojit_compile")
  xla = _predict_and_eval(data, "xla", "--jit_compile")
  _assert_same_predictions(xla, plain, prediction_records, XLA_ATOL)


# Oracle: the project's float32 path (two paths agree: bfloat16 = float32 within its tolerance).
def test_bfloat16_predict_and_eval_stay_float32_and_near_float32(data, prediction_records):
  plain = _predict_and_eval(data, "plain32", "--mixed_precision=none")
  mixed = _predict_and_eval(data, "bfloat16", "--mixed_precision=bfloat16")
  rows = _records(mixed / "predict", prediction_records)
  for shard in rows.values():  # probabilities are float32 sums of a float32 softmax
    np.testing.assert_allclose(shard[records.PROBABILITIES].sum(axis=1), 1, atol=1e-6)
  got, want = (_records(d / "predict", prediction_records) for d in (mixed, plain))
  for name in want:
    np.testing.assert_allclose(got[name][records.PROBABILITIES],
                               want[name][records.PROBABILITIES], atol=BFLOAT16_ATOL)
  # The policy was the loader's only: the next model built is float32 again.
  assert keras.config.dtype_policy().name == "float32"


def _train_args(data, workdir, *extra):
  return ["--mode=train", "--strategy=cpu", f"--labeled_data={data['labeled']}",
          f"--workdir={workdir}", f"--eval_data={data['eval']}", "--train_steps=6",
          "--batch_size=8", "--warmup_epochs=0", "--dropout_rate=0", "--survival_prob=1",
          "--batch_norm_recalibration_images=16", "--inference_batch_size=8", *TINY_FLAGS,
          *extra]


def _weights(workdir):
  model = keras.models.load_model(workdir / "model.keras", compile=False)
  return {w.path: np.asarray(w) for w in model.weights}


# Oracle: the project's plain path (two paths agree: XLA = no XLA).
@pytest.mark.slow  # ~25-50 s; XLA is off by default on CPUs (the predict/eval XLA test stays)
def test_jit_compiled_training_equals_the_uncompiled(data):
  root = data["root"]
  run(*_train_args(data, root / "train_plain", "--nojit_compile"))
  run(*_train_args(data, root / "train_xla", "--jit_compile"))
  got, want = _weights(root / "train_xla"), _weights(root / "train_plain")
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_allclose(got[path], value, rtol=1e-4, atol=XLA_ATOL, err_msg=path)
  config = json.loads((root / "train_xla" / "train_config.json").read_text())["config"]
  assert config["jit_compile"] is True


# float16 (loss scaling on) is slow on a CPU: 40 s against bfloat16's 15.
@pytest.mark.parametrize("precision", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_mixed_precision_training_saves_float32_and_learns(data, precision):
  workdir = data["root"] / f"train_{precision}"
  run(*_train_args(data, workdir, f"--mixed_precision={precision}", "--train_steps=12",
                   "--base_learning_rate=0.3"))
  history = json.loads((workdir / "history.json").read_text())
  assert all(np.isfinite(history["history"]["loss"]))
  model = keras.models.load_model(workdir / "model.keras", compile=False)
  # The saved model is precision-free: float32 weights, loaded as float32 outside the policy.
  assert all(w.dtype == "float32" for w in model.weights)
  assert model.get_layer("stem_conv").compute_dtype == "float32"
  assert keras.config.dtype_policy().name == "float32"
  assert history["eval"]["num_non_finite"] == 0
  # Three easy classes, chance 1/3: 12 steps learn them. Seen: float32 1.0, bfloat16 0.89,
  # float16 1.0 on these 19 images.
  assert history["eval"]["top1"] > 0.6


# main.py run once per [arguments, expected error] in one process with two logical CPU devices,
# configured before TensorFlow initialises them.
SCRIPT_TWO_CPUS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from absl import flags
import main
for args, expected_error in json.loads(sys.argv[1]):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  try:
    main.main(["main.py"])
  except SystemExit as e:
    if not expected_error or expected_error not in str(e):
      raise
    print("expected error:", e, file=sys.stderr)
  else:
    assert not expected_error, f"no error for {args}"
"""


# Oracle: the project's one-device path (two paths agree: two replicas = one device).
def test_mirrored_predict_and_eval_equal_one_device(data, prediction_records):
  """Two replicas of 4 images each per batch of 8; the last batches run padded. XLA over logical
  CPU devices cannot run (XLA puts every CPU program on the first device): a clear error."""
  runs = []
  for strategy in ("cpu", "mirrored"):
    out = data["root"] / f"strategy_{strategy}"
    common = [f"--checkpoint={data['teacher']}", "--normalization=imagenet",
              "--inference_batch_size=8", *TINY_FLAGS,
              f"--strategy={strategy}"]
    runs += [[["--mode=predict", *common, f"--unlabeled_data={data['unlabeled']}",
               f"--output={out / 'predict'}"], None],
             [["--mode=eval", *common, f"--eval_data={data['eval']}",
               f"--output={out / 'eval'}"], None]]
  runs.append([["--mode=eval", *common, f"--eval_data={data['eval']}", "--jit_compile",
                f"--output={data['root'] / 'xla_mirrored'}"],
               "--jit_compile does not run with several replicas on CPU devices"])
  result = subprocess.run([sys.executable, "-c", SCRIPT_TWO_CPUS, json.dumps(runs)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # The error comes only with several replicas: --strategy=mirrored had both devices.
  assert "expected error" in result.stderr
  _assert_same_predictions(data["root"] / "strategy_mirrored", data["root"] / "strategy_cpu",
                           prediction_records, 1e-5)
  assert not (data["root"] / "xla_mirrored").exists()


@pytest.mark.parametrize("strategy", ["gpu", "tpu"])
def test_an_absent_gpu_or_tpu_is_an_error_before_any_work(data, tmp_path, strategy):
  if strategy == "gpu" and tf.config.list_logical_devices("GPU"):
    pytest.skip("this machine has a GPU")
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit, match=f"--strategy={strategy}.*(no GPU|no TPU)"):
    run(*_train_args(data, workdir, f"--strategy={strategy}"))
  assert not workdir.exists()
