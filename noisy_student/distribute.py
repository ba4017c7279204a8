"""How a run uses its devices, decided once: the tf.distribute strategy (--strategy), the compute
dtype (--mixed_precision), XLA (--jit_compile) and a multi-worker cluster's input split. Every
phase that runs the model (train, predict, eval) takes them from here.

TensorFlow is imported by the functions that need it, so that main.py reads the choices below
without it.
"""

import contextlib
import logging

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu")
# --mixed_precision -> the Keras dtype policy (weights, logits and probabilities stay float32).
PRECISION_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def build_strategy(name="auto", tpu=None):
  """Returns a tf.distribute.Strategy.

  auto: TPU when `tpu` is given, MirroredStrategy over all GPUs when there are several, else the
  default strategy on the one device there is. mirrored: every GPU, or without GPUs every
  logical CPU device. multi_worker reads the cluster from TF_CONFIG.

  Raises:
    ValueError: an unknown name, or a GPU or TPU asked for and not there (before any work: a
      run that fell back to the CPU would take days and look fine).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if name not in STRATEGIES:
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
  if name == "multi_worker":
    # First: collective ops must be configured before anything initialises TensorFlow's
    # devices, listing them included.
    return _log(tf.distribute.MultiWorkerMirroredStrategy())
  gpus = tf.config.list_logical_devices("GPU")
  if name == "auto":
    name = "tpu" if tpu else ("mirrored" if len(gpus) > 1 else ("gpu" if gpus else "cpu"))
  if name == "tpu":
    strategy = _tpu_strategy(tf, tpu)
  elif name == "mirrored":
    # MirroredStrategy() alone takes every GPU but only the first CPU; without GPUs, every
    # logical CPU device (tf.config.set_logical_device_configuration) gets a replica.
    devices = gpus or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
  elif name == "gpu":
    if not gpus:
      raise ValueError(
          "--strategy=gpu but TensorFlow sees no GPU (is the CUDA build installed? "
          "`pip install tensorflow[and-cuda]`, README 'GPUs and TPUs'; `nvidia-smi` should list "
          "one)")
    strategy = tf.distribute.OneDeviceStrategy(gpus[0].name)
  else:
    # The default strategy: OneDeviceStrategy("/cpu:0") works too but runs Keras' distributed
    # input and step path, about 3x slower per image on a 2-core CPU.
    strategy = tf.distribute.get_strategy()
  return _log(strategy)


def _tpu_strategy(tf, tpu):
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    raise ValueError(f"--strategy=tpu (--tpu={tpu!r}) finds no TPU: {e}") from e
  if not tf.config.list_logical_devices("TPU"):
    raise ValueError(f"--strategy=tpu (--tpu={tpu!r}) finds no TPU")
  return tf.distribute.TPUStrategy(resolver)


def _log(strategy):
  logging.info("Strategy %s with %d replica(s)", type(strategy).__name__,
               strategy.num_replicas_in_sync)
  return strategy


def accelerated(strategy=None):
  """Whether `strategy` (default: the current one) runs on GPUs or TPUs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  strategy = strategy or tf.distribute.get_strategy()
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # the default strategy, which places ops on the first GPU if there is one
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
  return any(":GPU:" in d.upper() or ":TPU:" in d.upper() for d in devices)


def jit_compile(value, strategy=None):
  """--jit_compile: XLA for the training and inference steps. None (the default) means on for
  GPUs and TPUs and off on CPUs, where XLA compiles too but is rarely faster and costs a compile
  per shape. Keras' own "auto" turns XLA off under every tf.distribute strategy, and training
  always runs under one: the answer is given explicitly."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if value is None:
    return accelerated(strategy)
  strategy = strategy or tf.distribute.get_strategy()
  if value and strategy.num_replicas_in_sync > 1 and not accelerated(strategy):
    # XLA compiles every CPU program for the first CPU device; a replica on another logical CPU
    # device then cannot reach its own variables.
    raise ValueError("--jit_compile does not run with several replicas on CPU devices: drop it, "
                     "or use --strategy=cpu")
  return bool(value)


def stream_rows_per_step(strategy, global_rows):
  """How many rows of this worker's own training stream one step consumes, when each step's
  global batch holds `global_rows` of that stream's kind: all of them on one machine; under
  MultiWorkerMirroredStrategy, whose workers each read their own stream (auto-sharding off) and
  whose replicas each take the next slice of their worker's batches, this worker's replicas'
  share (tests/noisy_student/test_distribute.py's oracle restates it). A resumed run skips this
  many rows per step done."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return global_rows
  replicas = strategy.num_replicas_in_sync
  local = len(strategy.extended.worker_devices)
  if (global_rows * local) % replicas:
    raise ValueError(f"{global_rows} rows a step do not split evenly over {replicas} replicas")
  return global_rows * local // replicas


@contextlib.contextmanager
def precision(mixed_precision):
  """Models built (or loaded) in the block compute in --mixed_precision's dtype: Keras' global
  dtype policy for the block only, so that it does not leak into a later phase's model."""
  import keras  # pylint: disable=g-import-not-at-top
  if mixed_precision not in PRECISION_POLICIES:
    raise ValueError(f"--mixed_precision must be one of {tuple(PRECISION_POLICIES)}, got "
                     f"{mixed_precision!r}")
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(PRECISION_POLICIES[mixed_precision])
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def inference_strategy(strategy=None):
  """The strategy that loads and runs a model for inference under `strategy` (default: the
  current one): itself, except under MultiWorkerMirroredStrategy, where each worker predicts its
  own shards on its own devices (a collective step would wait for the other workers' batches)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  strategy = strategy or tf.distribute.get_strategy()
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return tf.distribute.get_strategy()
  return strategy


def input_split(cluster, task_type, task_id):
  """(input pipelines, this task's index) in a multi-worker cluster, e.g. TF_CONFIG's
  {"chief": [...], "worker": [...]}: every chief and worker task trains on its own part of the
  input, a separate chief first. Counting only the tasks of one's own type would give a chief and
  worker 0 the same part."""
  chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
  if task_type not in ("chief", "worker"):
    raise ValueError(f"task type {task_type!r} does not train (chief or worker)")
  return chiefs + workers, task_id if task_type == "chief" else chiefs + task_id


def worker_split(strategy):
  """(training tasks, this task's index) of `strategy`'s cluster; index 0 is the chief, which
  alone writes; (1, 0) outside MultiWorkerMirroredStrategy."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    resolver = strategy.cluster_resolver
    return input_split(resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id)
  return 1, 0
