"""Training math against NumPy re-statements of the reference formulas.

Expected values come from the formulas in the reference digests (noisy-student-reference.md
section 4, efficientnet-and-randaugment.md section 7), written out below in NumPy, never from the
code under test.
"""

import math
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import efficientnet
from noisy_student.training import ema
from noisy_student.training import losses
from noisy_student.training import optimizers
from noisy_student.training import schedules

NUM_CLASSES = 4
LABEL_SMOOTHING = 0.1


# --- NumPy re-statements of the reference -------------------------------------------------------

def _np_log_softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_softmax_cross_entropy(onehot, logits, label_smoothing):
  """TF1 tf.losses.softmax_cross_entropy, mean over the batch."""
  targets = onehot * (1.0 - label_smoothing) + label_smoothing / onehot.shape[-1]
  return float(np.mean(-(targets * _np_log_softmax(logits)).sum(-1)))


def _np_reference_loss(targets, logits, lab_bsz, unlabel_ratio, mode):
  """main.py:model_fn with label_data_sample_prob = 1: (lab_loss, unl_loss, data_loss)."""
  lab_loss = _np_softmax_cross_entropy(targets[:lab_bsz], logits[:lab_bsz], LABEL_SMOOTHING)
  if unlabel_ratio:
    unl_targets, unl_logits = targets[lab_bsz:], logits[lab_bsz:]
    if mode == "hard":
      unl_loss = _np_softmax_cross_entropy(unl_targets, unl_logits, LABEL_SMOOTHING)
    else:
      unl_loss = float(np.mean((unl_targets * -_np_log_softmax(unl_logits)).sum(-1)))
  else:
    unl_loss = 0.0
  real_lab_bsz = float(lab_bsz)
  real_unl_bsz = lab_bsz * unlabel_ratio
  data_loss = (lab_loss * real_lab_bsz + unl_loss * real_unl_bsz) / real_lab_bsz
  return lab_loss, unl_loss, data_loss


def _batch(lab_bsz, unlabel_ratio, mode, seed=0):
  """A fixed small batch: one-hot labeled rows, then soft (or one-hot) pseudo-labeled rows."""
  rng = np.random.default_rng(seed)
  rows = lab_bsz * (1 + unlabel_ratio)
  logits = rng.normal(scale=2.0, size=(rows, NUM_CLASSES)).astype(np.float32)
  targets = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, rows)]
  if mode == "soft":
    soft = rng.dirichlet(np.ones(NUM_CLASSES), size=rows - lab_bsz).astype(np.float32)
    targets[lab_bsz:] = soft
  return targets, logits


# --- losses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("unlabel_ratio", [0, 3])
def test_noisy_student_loss_matches_reference(mode, unlabel_ratio):
  lab_bsz = 2
  targets, logits = _batch(lab_bsz, unlabel_ratio, mode)
  lab_loss, unl_loss, data_loss = _np_reference_loss(targets, logits, lab_bsz, unlabel_ratio,
                                                     mode)
  loss = losses.NoisyStudentLoss(lab_bsz, label_smoothing=LABEL_SMOOTHING, pseudo_labels=mode)
  np.testing.assert_allclose(float(loss(targets, logits)), data_loss, rtol=1e-6)
  terms = losses.loss_terms(targets, logits, lab_bsz, LABEL_SMOOTHING, mode)
  np.testing.assert_allclose([float(t) for t in terms], [lab_loss, unl_loss], rtol=1e-6)


def test_noisy_student_loss_by_hand():
  # Zero logits: every row's cross entropy is log(C) whatever its target, so the reference's
  # weighting gives (1 + r) * log(C).
  targets, _ = _batch(2, 3, "soft")
  loss = losses.NoisyStudentLoss(2)
  np.testing.assert_allclose(float(loss(targets, np.zeros_like(targets))), 4 * math.log(4),
                             rtol=1e-6)


def test_labeled_part_agrees_with_keras_label_smoothing():
  targets, logits = _batch(8, 0, "hard")
  keras_ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
  np.testing.assert_allclose(float(losses.NoisyStudentLoss(8)(targets, logits)),
                             float(keras_ce(targets, logits)), rtol=1e-6)


def test_loss_metrics_and_weight_decay_through_keras_compile():
  lab_bsz, ratio, weight_decay = 2, 3, 1e-2
  targets, _ = _batch(lab_bsz, ratio, "soft", seed=1)
  images = np.random.default_rng(2).normal(size=(len(targets), 5)).astype(np.float32)
  model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu"),
                            keras.layers.BatchNormalization(), keras.layers.Dense(NUM_CLASSES)])
  model.compile(loss=losses.NoisyStudentLoss(lab_bsz),
                metrics=[losses.LabeledLoss(lab_bsz), losses.UnlabeledLoss(lab_bsz)],
                jit_compile=False)
  losses.add_weight_decay(model, weight_decay)
  results = model.evaluate(images, targets, batch_size=len(targets), verbose=0, return_dict=True)

  logits = model.predict(images, batch_size=len(targets), verbose=0)
  lab_loss, unl_loss, data_loss = _np_reference_loss(targets, logits, lab_bsz, ratio, "soft")
  decayed = [model.layers[0].kernel, model.layers[0].bias, model.layers[2].kernel,
             model.layers[2].bias]  # Not the batch-norm gamma and beta.
  l2 = weight_decay * sum(float(np.sum(np.square(v.numpy()))) / 2 for v in decayed)
  np.testing.assert_allclose(results["loss"], data_loss + l2, rtol=1e-5)
  np.testing.assert_allclose(results["labeled_loss"], lab_loss, rtol=1e-5)
  np.testing.assert_allclose(results["unlabeled_loss"], unl_loss, rtol=1e-5)
  np.testing.assert_allclose(float(losses.weight_decay_loss(model, weight_decay)), l2, rtol=1e-5)


def test_unlabeled_metric_is_zero_without_pseudo_labels():
  targets, logits = _batch(4, 0, "soft")
  metric = losses.UnlabeledLoss(4)
  metric.update_state(targets, logits)
  assert float(metric.result()) == 0.0


def test_loss_rejects_short_batches_and_unknown_modes():
  targets, logits = _batch(2, 0, "soft")
  with pytest.raises(ValueError, match="drop_remainder"):
    losses.NoisyStudentLoss(4)(targets, logits)
  with pytest.raises(ValueError, match="pseudo_labels"):
    losses.NoisyStudentLoss(2, pseudo_labels="sharpened")


def test_loss_config_round_trip():
  loss = losses.NoisyStudentLoss(32, label_smoothing=0.2, pseudo_labels="hard")
  restored = keras.losses.deserialize(keras.losses.serialize(loss))
  assert isinstance(restored, losses.NoisyStudentLoss)
  assert restored.get_config() == loss.get_config()


def test_weight_decay_skips_batch_norm_only(tiny_model):
  decayed = {v.path for v in losses.weight_decay_variables(tiny_model)}
  batch_norm = {v.path for v in tiny_model.trainable_variables if "_bn/" in v.path}
  assert batch_norm and not decayed & batch_norm
  assert decayed | batch_norm == {v.path for v in tiny_model.trainable_variables}
  assert {"predictions/bias", "block1a_se_reduce/bias"} <= decayed


# --- everything together on a tiny EfficientNet ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
  keras.utils.set_random_seed(0)
  return efficientnet.build_model("efficientnet-b0", NUM_CLASSES, width_coefficient=0.1,
                                  depth_coefficient=0.1)


def test_tiny_efficientnet_fits_with_all_pieces(tiny_model):
  lab_bsz, ratio = 2, 3
  rows = lab_bsz * (1 + ratio)
  schedule = schedules.WarmupExponentialDecay(
      schedules.scaled_learning_rate(0.016, lab_bsz), steps_per_epoch=1.5, warmup_epochs=1)
  optimizer = optimizers.TF1RMSProp(schedule, moving_average_decay=0.9999)
  tiny_model.compile(optimizer=optimizer,
                     loss=losses.NoisyStudentLoss(lab_bsz),
                     metrics=[losses.LabeledLoss(lab_bsz), losses.UnlabeledLoss(lab_bsz)],
                     jit_compile=False)
  optimizer.track_moving_averages(ema.batch_norm_statistics(tiny_model))
  # Without a tf.distribute strategy Keras builds the optimizer inside the traced step, where each
  # variable gets an in-graph conditional initializer: building it first saves most of the trace.
  optimizer.build(tiny_model.trainable_variables)
  losses.add_weight_decay(tiny_model, 1e-5)

  rng = np.random.default_rng(8)
  images = rng.normal(size=(3 * rows, 32, 32, 3)).astype(np.float32)
  targets = rng.dirichlet(np.ones(NUM_CLASSES), size=3 * rows).astype(np.float32)
  for start in range(0, len(targets), rows):
    targets[start:start + lab_bsz] = np.eye(NUM_CLASSES)[rng.integers(0, NUM_CLASSES, lab_bsz)]
  history = tiny_model.fit(images, targets, batch_size=rows, epochs=1, verbose=0, shuffle=False)

  assert int(optimizer.iterations) == 3
  for name in ("loss", "labeled_loss", "unlabeled_loss"):
    assert np.isfinite(history.history[name][0]), name
  live_logits = tiny_model(images[:rows], training=False)
  with ema.swap_to_ema(tiny_model):
    ema_logits = tiny_model(images[:rows], training=False)
  assert np.all(np.isfinite(ema_logits))
  assert not np.allclose(ema_logits, live_logits)  # The averages are near the initial weights.


# --- tf.distribute ------------------------------------------------------------------------------

_MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from noisy_student.training import ema, losses, optimizers

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.dirichlet(np.ones(4), size=8).astype("float32")
    y[:2] = np.eye(4)[[1, 3]]
    per_replica = [0, 2, 3, 4, 1, 5, 6, 7]  # Replica i gets [labeled_i, unlabeled_i].

    def trained(x, y):
      keras.utils.set_random_seed(1)
      model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6), keras.layers.Dense(4)])
      optimizer = optimizers.TF1RMSProp(0.05, moving_average_decay=0.5)
      model.compile(optimizer=optimizer, loss=losses.NoisyStudentLoss(2), jit_compile=False)
      losses.add_weight_decay(model, 1e-2)
      loss = model.evaluate(x, y, batch_size=8, verbose=0)
      model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
      return [loss] + model.get_weights() + [a.numpy() for _, a in optimizer.moving_averages]

    single = trained(x, y)
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
      mirrored = trained(x[per_replica], y[per_replica])
    for a, b in zip(single, mirrored):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("MATCH")
""")


@pytest.mark.slow
def test_mirrored_strategy_matches_single_device(tmp_path):
  """Two replicas, each with its half of the labeled rows first, train like one device."""
  script = tmp_path / "mirrored.py"
  script.write_text(_MIRRORED_SCRIPT)
  root = str(pathlib.Path(__file__).resolve().parents[3])
  env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert "MATCH" in result.stdout, result.stderr[-3000:]
