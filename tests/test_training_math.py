"""Training math against NumPy re-statements of the reference formulas.

Expected values come from the formulas in the reference digests (noisy-student-reference.md
section 4, efficientnet-and-randaugment.md section 7), written out below in NumPy, never from the
code under test.
"""

import math
import os
import re
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


# --- learning-rate schedule --------------------------------------------------------------------

def _reference_lr(step, peak, steps_per_epoch, warmup_epochs=5, decay_epochs=2.4, rate=0.97):
  """utils.build_learning_rate: tf.train.exponential_decay(staircase) under a linear warm-up."""
  warmup_steps = int(warmup_epochs * steps_per_epoch)
  if step < warmup_steps:
    return peak * step / warmup_steps
  return peak * rate ** math.floor(step / (steps_per_epoch * decay_epochs))


def test_schedule_values_and_warmup_jump():
  peak, steps_per_epoch = 0.1, 10.5  # warm-up ends at int(52.5) = 52; decay every 25.2 steps
  schedule = schedules.WarmupExponentialDecay(peak, steps_per_epoch)
  for step in [0, 1, 26, 51, 52, 53, 75, 100, 1000, 12345]:
    # float32 (as TF1 computes it): 0.97**39 is off by ~1e-6 relative.
    np.testing.assert_allclose(float(schedule(step)), _reference_lr(step, peak, steps_per_epoch),
                               rtol=1e-5, atol=1e-12, err_msg=f"step {step}")
  # The reference's jump: decay has counted floor(52 / 25.2) = 2 periods when warm-up ends.
  np.testing.assert_allclose(float(schedule(51)), peak * 51 / 52, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(52)), peak * 0.97**2, rtol=1e-6)


def test_schedule_options():
  schedule = schedules.WarmupExponentialDecay(0.1, 10.5, decay_from_warmup_end=True)
  np.testing.assert_allclose(float(schedule(52)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(52 + 26)), 0.1 * 0.97, rtol=1e-6)
  shifted = schedules.WarmupExponentialDecay(0.1, 10.5, start_step=1000)
  np.testing.assert_allclose(float(shifted(5)), _reference_lr(1005, 0.1, 10.5), rtol=1e-5)
  no_warmup = schedules.WarmupExponentialDecay(0.1, 10.5, warmup_epochs=0)
  np.testing.assert_allclose(float(no_warmup(0)), 0.1, rtol=1e-6)


def test_schedule_serialises():
  schedule = schedules.WarmupExponentialDecay(0.2, 3.5, decay_epochs=1.5, start_step=7)
  restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
  assert isinstance(restored, schedules.WarmupExponentialDecay)
  assert restored.get_config() == schedule.get_config()


def test_final_learning_rate_matches_svhn_recipe():
  # noisy-student-reference.md section 6.1: batch 128, 69,257 images, 109,474 steps,
  # --final_base_lr=0.0002 -> decay every 1.3716 epochs (742.1 steps), peak 0.008.
  steps_per_epoch = 69257 / 128
  decay_epochs = schedules.decay_epochs_for_final_learning_rate(
      0.016, 0.0002, total_epochs=109474 / steps_per_epoch)
  assert decay_epochs == pytest.approx(1.3716, abs=1e-4)
  assert decay_epochs * steps_per_epoch == pytest.approx(742.1, abs=0.1)
  assert schedules.scaled_learning_rate(0.016, 128) == pytest.approx(0.008)


def test_final_learning_rate_inside_the_warm_up_is_an_error_naming_the_flags():
  with pytest.raises(ValueError, match=r"run is 3 epochs and --warmup_epochs=5"):
    schedules.decay_epochs_for_final_learning_rate(0.016, 0.0002, total_epochs=3)


@pytest.mark.parametrize("final, decay_rate, message", [
    (0.0, 0.97, "above 0 and below --base_learning_rate=0.016, got 0"),
    (0.016, 0.97, "got 0.016"),
    (0.032, 0.97, "got 0.032"),
    (0.0002, 1.0, "--lr_decay_factor between 0 and 1, got 1"),
])
def test_a_final_learning_rate_out_of_reach_is_an_error_naming_the_flags(final, decay_rate,
                                                                          message):
  with pytest.raises(ValueError, match=re.escape(message)):
    schedules.decay_epochs_for_final_learning_rate(0.016, final, total_epochs=100,
                                                   decay_rate=decay_rate)


# --- optimizer ---------------------------------------------------------------------------------

def _np_rmsprop(values, grads_per_step, lrs, rho=0.9, momentum=0.9, eps=1e-3, ms_init=1.0):
  """tf.train.RMSPropOptimizer: ms = rho*ms + (1-rho)*g^2; mom = m*mom + lr*g/sqrt(ms+eps)."""
  values = [v.astype(np.float64) for v in values]
  ms = [np.full_like(v, ms_init) for v in values]
  mom = [np.zeros_like(v) for v in values]
  for grads, lr in zip(grads_per_step, lrs):
    for i, g in enumerate(grads):
      ms[i] = rho * ms[i] + (1 - rho) * g**2
      mom[i] = momentum * mom[i] + lr * g / np.sqrt(ms[i] + eps)
      values[i] = values[i] - mom[i]
  return values


def _apply_steps(optimizer, values, grads_per_step):
  variables = [keras.Variable(v) for v in values]
  for grads in grads_per_step:
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
  return [v.numpy() for v in variables]


def test_tf1_rmsprop_matches_numpy_and_differs_from_keras():
  rng = np.random.default_rng(3)
  values = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
  grads = [[rng.normal(size=v.shape).astype(np.float32) for v in values] for _ in range(6)]
  schedule = schedules.WarmupExponentialDecay(0.05, 1.0, warmup_epochs=2, decay_epochs=1.5)
  lrs = [_reference_lr(step, 0.05, 1.0, warmup_epochs=2, decay_epochs=1.5) for step in range(6)]

  ours = _apply_steps(optimizers.TF1RMSProp(schedule), values, grads)
  for got, want in zip(ours, _np_rmsprop(values, grads, lrs)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  # Keras' RMSprop is the same update with ms starting at zeros, hence larger first steps.
  constant = [0.01] * 2
  ours = _apply_steps(optimizers.TF1RMSProp(0.01), values, grads[:2])
  keras_rms = _apply_steps(keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3),
                           values, grads[:2])
  np.testing.assert_allclose(keras_rms[0], _np_rmsprop(values, grads[:2], constant, ms_init=0)[0],
                             rtol=1e-5, atol=1e-6)
  step_ours = np.abs(ours[0] - values[0]).mean()
  step_keras = np.abs(keras_rms[0] - values[0]).mean()
  assert step_keras > 2 * step_ours


def test_tf1_rmsprop_serialises():
  schedule = schedules.WarmupExponentialDecay(0.1, 10.0)
  optimizer = optimizers.TF1RMSProp(schedule, rho=0.8, moving_average_decay=0.999)
  restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
  assert isinstance(restored, optimizers.TF1RMSProp)
  assert restored.get_config() == optimizer.get_config()
  assert restored.get_config()["moving_average_decay"] == 0.999


# --- EMA ---------------------------------------------------------------------------------------

def test_moving_average_decay_warmup():
  got = [float(ema.moving_average_decay(n, 0.9999)) for n in [0, 1, 10, 10**6]]
  np.testing.assert_allclose(got, [1 / 10, 2 / 11, 11 / 20, 0.9999], rtol=1e-6)


def _small_bn_model():
  keras.utils.set_random_seed(4)
  return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                           keras.layers.BatchNormalization(momentum=0.5),
                           keras.layers.Dense(2)])


def _ema_compiled(model, max_decay):
  optimizer = optimizers.TF1RMSProp(0.05, moving_average_decay=max_decay)
  model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
  optimizer.track_moving_averages(ema.batch_norm_statistics(model))
  return optimizer


def test_ema_matches_numpy_including_batch_norm_statistics():
  model = _small_bn_model()
  max_decay = 0.2  # (1+n)/(10+n) passes it at n = 2: both branches of the min are exercised.
  optimizer = _ema_compiled(model, max_decay)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  y = rng.normal(size=(8, 2)).astype(np.float32)
  averaged = model.trainable_variables + ema.batch_norm_statistics(model)
  shadows = [v.numpy().astype(np.float64) for v in averaged]
  initial_stats = [v.numpy() for v in ema.batch_norm_statistics(model)]
  for n in range(1, 5):
    model.train_on_batch(x * n, y)
    decay = min(max_decay, (1 + n) / (10 + n))
    shadows = [s - (s - v.numpy()) * (1 - decay) for s, v in zip(shadows, averaged)]

  assert int(optimizer.iterations) == 4
  by_id = {id(v): a.numpy() for v, a in optimizer.moving_averages}
  assert len(by_id) == len(averaged) == 4 + 2 + 2  # kernels and biases, gamma and beta, stats
  for variable, want in zip(averaged, shadows):
    np.testing.assert_allclose(by_id[id(variable)], want, rtol=1e-5, atol=1e-6,
                               err_msg=variable.path)
  for before, variable in zip(initial_stats, ema.batch_norm_statistics(model)):
    assert not np.allclose(before, variable.numpy())  # The statistics did move.


def test_swap_to_ema_round_trip():
  model = _small_bn_model()
  optimizer = _ema_compiled(model, 0.9)
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
  for _ in range(3):
    model.train_on_batch(x, y)
  live = [v.numpy() for v, _ in optimizer.moving_averages]
  with ema.swap_to_ema(model):
    for variable, average in optimizer.moving_averages:
      np.testing.assert_array_equal(variable.numpy(), average.numpy())
    assert not np.allclose(model.predict(x, verbose=0), 0)
  for (variable, _), value in zip(optimizer.moving_averages, live):
    np.testing.assert_array_equal(variable.numpy(), value)


def test_swap_to_ema_requires_batch_norm_statistics():
  model = _small_bn_model()
  model.compile(optimizer=optimizers.TF1RMSProp(0.05, moving_average_decay=0.9), loss="mse",
                jit_compile=False)
  model.train_on_batch(np.ones((2, 4), np.float32), np.ones((2, 2), np.float32))
  with pytest.raises(ValueError, match="track_moving_averages"):
    with ema.swap_to_ema(model):
      pass
  with pytest.raises(ValueError, match="before the optimizer is built"):
    model.optimizer.track_moving_averages(ema.batch_norm_statistics(model))


class _Interrupt(keras.callbacks.Callback):

  def on_train_batch_end(self, batch, logs=None):
    if batch == 1:
      raise RuntimeError("interrupted")


class _RecordOnTrainBegin(keras.callbacks.Callback):

  def on_train_begin(self, logs=None):
    optimizer = self.model.optimizer
    self.iterations = int(optimizer.iterations)
    self.averages = [a.numpy() for _, a in optimizer.moving_averages]


def test_backup_and_restore_resumes_the_averages(tmp_path):
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)
  backup = str(tmp_path / "backup")

  model = _small_bn_model()
  optimizer = _ema_compiled(model, 0.9999)
  with pytest.raises(RuntimeError, match="interrupted"):
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
              callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=1), _Interrupt()])
  saved = [a.numpy() for _, a in optimizer.moving_averages]
  saved_stats = [v.numpy() for v in ema.batch_norm_statistics(model)]

  resumed = _small_bn_model()
  _ema_compiled(resumed, 0.9999)
  record = _RecordOnTrainBegin()
  resumed.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False,
              callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=1), record])
  assert record.iterations == 2
  for got, want in zip(record.averages, saved):
    np.testing.assert_array_equal(got, want)
  assert len(saved) == len(resumed.trainable_variables) + len(saved_stats)


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
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert "MATCH" in result.stdout, result.stderr[-3000:]
