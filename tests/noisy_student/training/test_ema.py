"""noisy_student/training/ema.py: the moving averages (batch-norm statistics included) against
NumPy, the swap to them, and their resumption from a backup."""

import keras
import numpy as np
import pytest

from noisy_student.training import ema
from noisy_student.training import optimizers


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
