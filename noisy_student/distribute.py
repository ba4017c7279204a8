"""One place that turns --strategy into a tf.distribute strategy (the training phases run under
it; predict, filter and eval run on the default device)."""

import logging

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu")


def build_strategy(name="auto", tpu=None):
  """Returns a tf.distribute.Strategy.

  auto: TPU when `tpu` is given, MirroredStrategy over all GPUs when there are several, else the
  default strategy on the one device there is. mirrored: every GPU, or without GPUs every
  logical CPU device. multi_worker reads the cluster from TF_CONFIG.
  """
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
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
  elif name == "mirrored":
    # MirroredStrategy() alone takes every GPU but only the first CPU; without GPUs, every
    # logical CPU device (tf.config.set_logical_device_configuration) gets a replica.
    devices = gpus or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
  elif name == "gpu":
    if not gpus:
      raise ValueError("--strategy=gpu but TensorFlow sees no GPU")
    strategy = tf.distribute.OneDeviceStrategy(gpus[0].name)
  else:
    # The default strategy: OneDeviceStrategy("/cpu:0") works too but runs Keras' distributed
    # input and step path, about 3x slower per image on a 2-core CPU.
    strategy = tf.distribute.get_strategy()
  return _log(strategy)


def _log(strategy):
  logging.info("Strategy %s with %d replica(s)", type(strategy).__name__,
               strategy.num_replicas_in_sync)
  return strategy
