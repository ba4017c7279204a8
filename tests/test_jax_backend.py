"""The model runs on Keras' JAX backend with the same numerics (for GPU benchmarks against timm).

Skipped where JAX is not installed (it is not a requirement: `pip install "jax[cpu]"`)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
import numpy as np
import keras
import efficientnet
model = efficientnet.build_model("efficientnet-b0", 7, small_image=True, width_coefficient=0.25,
                                 depth_coefficient=0.3)
rng = np.random.default_rng(0)
values = [rng.normal(0, 0.3, w.shape).astype("float32") for w in model.weights]
values = [np.abs(v) + 0.5 if "moving_variance" in w.path else v
          for v, w in zip(values, model.weights)]
model.set_weights(values)
x = rng.normal(size=(4, 32, 32, 3)).astype("float32")
np.save(sys.argv[1], np.asarray(model(x, training=False)))
model.compile("rmsprop", keras.losses.CategoricalCrossentropy(from_logits=True))
history = model.fit(x, np.eye(7, dtype="float32")[[0, 1, 2, 3]], epochs=2, verbose=0)
assert np.all(np.isfinite(history.history["loss"]))
"""


def _logits(backend, path):
  env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=str(ROOT))
  subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, env=env, timeout=300)
  return np.load(path)


def test_jax_backend_computes_the_same_logits_and_trains(tmp_path):
  np.testing.assert_allclose(_logits("jax", tmp_path / "jax.npy"),
                             _logits("tensorflow", tmp_path / "tf.npy"), rtol=1e-4, atol=1e-4)
