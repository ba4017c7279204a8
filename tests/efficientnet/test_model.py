"""The Keras model: exact parameter counts, numerics against independent statements, saving."""

import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import efficientnet

TINY = dict(width_coefficient=0.25, depth_coefficient=0.3)

# efficientnet-and-randaugment.md section 4.2 (trainable for 1000 classes; BN moving statistics).
PARAMETERS = {
    "efficientnet-b0": (5_288_548, 42_016), "efficientnet-b1": (7_794_184, 62_048),
    "efficientnet-b2": (9_109_994, 67_568), "efficientnet-b3": (12_233_232, 87_296),
    "efficientnet-b4": (19_341_616, 125_200), "efficientnet-b5": (30_389_784, 172_736),
    "efficientnet-b6": (43_040_704, 224_432), "efficientnet-b7": (66_347_960, 310_720),
    "efficientnet-l0": (140_764_664, 493_904), "efficientnet-l1": (272_630_564, 693_920),
    "efficientnet-l2": (480_309_308, 1_090_688),
}
LARGE = {"efficientnet-b6", "efficientnet-b7", "efficientnet-l0", "efficientnet-l1",
         "efficientnet-l2"}


def _count(weights):
  return sum(math.prod(w.shape) for w in weights)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in PARAMETERS])
def test_parameter_counts_are_exact(name):
  model = efficientnet.build_model(name, 1000)
  trainable, moving = PARAMETERS[name]
  assert _count(model.trainable_weights) == trainable
  assert _count(model.non_trainable_weights) == moving
  assert len(model.block_plan) == len({l.name[:len("block1a")] for l in model.layers
                                       if l.name.startswith("block")})
  keras.backend.clear_session()


def _fan_in(layer, shape):
  if len(shape) < 2:
    return 1  # batch norm statistics and biases
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    return math.prod(shape[:-2])
  return math.prod(shape[:-1])


def test_same_outputs_as_keras_applications_with_the_same_weights():
  """keras.applications.EfficientNetB0 is an independent implementation of the same graph (with
  explicit ZeroPadding for TF SAME padding and preprocessing inside); with its weights copied
  into ours by layer name, both must compute the same logits."""
  reference = keras.applications.EfficientNetB0(
      weights=None, input_shape=(64, 64, 3), classes=7, classifier_activation=None)
  ours = efficientnet.build_model("efficientnet-b0", 7)
  rng = np.random.default_rng(0)
  copied = 0
  for layer in ours.layers:
    if not layer.weights:
      continue
    source = reference.get_layer(layer.name)
    # Kernels scaled by 1/sqrt(fan in) keep activations near 1 through all 16 blocks: with unit
    # scale they reach 1e10, where float32 sums in another order differ by more than 1e-4.
    values = [rng.normal(0, 0.5 / math.sqrt(_fan_in(layer, w.shape)), w.shape).astype("float32")
              for w in layer.weights]
    if isinstance(layer, keras.layers.BatchNormalization):
      values[3] = np.abs(values[3]) + 0.5  # moving variance must be positive
    layer.set_weights(values)
    source.set_weights(values)
    copied += 1
  assert copied == sum(1 for l in reference.layers if l.weights) - 1  # all but normalization
  x = rng.uniform(0, 1, (2, 64, 64, 3)).astype("float32")
  # keras.applications rescales 0-255 input by 1/255 and normalises with mean 0, variance 1.
  expected = reference.predict(x * 255.0, verbose=0)
  got = ours.predict(x, verbose=0)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _numpy_conv_same(x, kernel, stride):
  """TF 'SAME' convolution written out: pad total max((ceil(n/s)-1)*s + k - n, 0), half before."""
  n, k = x.shape[0], kernel.shape[0]
  out = math.ceil(n / stride)
  pad = max((out - 1) * stride + k - n, 0)
  before = pad // 2
  xp = np.pad(x, ((before, pad - before), (before, pad - before), (0, 0)))
  y = np.zeros((out, out, kernel.shape[3]))
  for i in range(out):
    for j in range(out):
      patch = xp[i * stride:i * stride + k, j * stride:j * stride + k, :]
      y[i, j] = np.tensordot(patch, kernel, axes=([0, 1, 2], [0, 1, 2]))
  return y


@pytest.mark.parametrize("size", [16, 17])
def test_stem_uses_tf_same_padding(size):
  model = efficientnet.build_model("efficientnet-b0", 3, **TINY)
  stem = keras.Model(model.input, model.get_layer("stem_conv").output)
  x = np.random.default_rng(1).normal(size=(1, size, size, 3)).astype("float32")
  kernel = model.get_layer("stem_conv").get_weights()[0]
  np.testing.assert_allclose(stem.predict(x, verbose=0)[0], _numpy_conv_same(x[0], kernel, 2),
                             rtol=1e-4, atol=1e-4)


def test_layer_numerics_follow_the_reference():
  model = efficientnet.build_model("efficientnet-b0", 1000)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      assert (layer.momentum, layer.epsilon) == (0.99, 1e-3), layer.name
  assert model.get_layer("block2a_se_reduce").filters == 4
  assert model.get_layer("block2a_se_reduce").use_bias
  assert model.get_layer("block2a_activation").activation.__name__ in ("swish", "silu")
  names = [l.name for l in model.layers]
  assert names.index("top_dropout") == names.index("predictions") - 1
  assert model.get_layer("top_dropout").rate == 0.2
  # Stochastic depth only where the skip is an identity, at the scheduled rate, per example.
  assert "block1a_drop" not in names and "block2a_drop" not in names
  drop = model.get_layer("block2b_drop")
  assert drop.rate == pytest.approx(0.2 * 2 / 16)
  assert tuple(drop.noise_shape) == (None, 1, 1, 1)
  assert model.get_layer("block7a_project_bn").output.shape[-1] == 320


def test_initializers_are_the_references():
  keras.utils.set_random_seed(0)
  model = efficientnet.build_model("efficientnet-b0", 1000)
  kernel = model.get_layer("top_conv").get_weights()[0]      # [1, 1, 320, 1280]
  std = math.sqrt(2.0 / (1 * 1 * 1280))                      # fan_out = kh * kw * out
  assert np.std(kernel) == pytest.approx(std, rel=0.02)
  assert np.abs(kernel).max() > 3 * std                      # plain normal, not truncated at 2 sigma
  depthwise = model.get_layer("block6a_dwconv").get_weights()[0]  # [5, 5, C, 1]: fan_out = 25
  assert np.std(depthwise) == pytest.approx(math.sqrt(2.0 / 25), rel=0.03)
  dense = model.get_layer("predictions").get_weights()[0]
  bound = 1 / math.sqrt(1000)
  assert np.abs(dense).max() <= bound and np.abs(dense).max() > 0.99 * bound
  assert np.all(model.get_layer("predictions").get_weights()[1] == 0)


def test_stochastic_depth_drops_whole_examples_and_rescales():
  model = efficientnet.build_model("efficientnet-b0", 3, survival_prob=0.5)
  drop = model.get_layer("block6d_drop")
  assert drop.rate == pytest.approx(0.5 * 14 / 16)
  x = np.ones((512, 2, 2, 4), "float32")
  y = np.asarray(drop(x, training=True))
  per_example = y.reshape(512, -1)
  assert np.all(per_example.min(1) == per_example.max(1))   # one draw per example
  keep = 1 - drop.rate
  values = per_example[:, 0]
  assert np.all(np.isclose(values, 0) | np.isclose(values, 1 / keep))
  assert np.mean(per_example[:, 0] > 0) == pytest.approx(keep, abs=0.08)
  np.testing.assert_array_equal(np.asarray(drop(x, training=False)), x)


def test_returns_logits_and_is_deterministic_at_inference():
  model = efficientnet.build_model("efficientnet-b0", 5, **TINY)
  x = np.random.default_rng(2).normal(size=(3, 32, 32, 3)).astype("float32")
  a, b = model(x, training=False), model(x, training=False)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(np.asarray(a).sum(1), 1.0)


def test_small_image_keeps_resolution_in_stages_two_and_three():
  x = np.zeros((1, 32, 32, 3), "float32")
  small = efficientnet.build_model("efficientnet-b0", 10, small_image=True, **TINY)
  large = efficientnet.build_model("efficientnet-b0", 10, **TINY)
  assert keras.Model(small.input, small.get_layer("top_conv").output)(x).shape[1:3] == (4, 4)
  assert keras.Model(large.input, large.get_layer("top_conv").output)(x).shape[1:3] == (1, 1)


def test_save_and_load_round_trip(tmp_path):
  model = efficientnet.build_model("efficientnet-b1", 6, small_image=True, dropout_rate=0.4,
                                   survival_prob=0.7, **TINY)
  x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
  path = tmp_path / "model.keras"
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded, efficientnet.EfficientNet)
  assert loaded.efficientnet_config == {
      "variant": "efficientnet-b1", "num_classes": 6, "image_size": None, "small_image": True,
      "dropout_rate": 0.4, "survival_prob": 0.7, "width_coefficient": 0.25,
      "depth_coefficient": 0.3}
  np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
  assert [w.path for w in loaded.weights] == [w.path for w in model.weights]


def test_mixed_precision_gives_float32_logits():
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    model = efficientnet.build_model("efficientnet-b0", 4, **TINY)
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)
    logits = model(np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32"))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(np.asarray(logits)))
  finally:
    keras.config.set_dtype_policy(previous)


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="valid variants"):
    efficientnet.build_model("efficientnet-b8", 10)
  with pytest.raises(ValueError, match="num_classes"):
    efficientnet.build_model("efficientnet-b0", 0)
  with pytest.raises(ValueError, match="survival_prob"):
    efficientnet.build_model("efficientnet-b0", 10, survival_prob=0.0)


ROOT = pathlib.Path(__file__).resolve().parents[2]
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


# Oracle: the same model on TensorFlow (two backends agree); published counts: the first test.
@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="JAX is not installed (not a requirement)")
def test_jax_backend_computes_the_same_logits_and_trains(tmp_path):
  np.testing.assert_allclose(_logits("jax", tmp_path / "jax.npy"),
                             _logits("tensorflow", tmp_path / "tf.npy"), rtol=1e-4, atol=1e-4)
