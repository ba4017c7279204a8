"""noisy_student/inference.py: the shared inference step."""

import keras
import numpy as np
import pytest

from noisy_student import inference

NUM_CLASSES = 3


# XLA fuses and reorders float32 sums: seen up to 3e-7 on these probabilities and 2e-6 on the
# weights after 6 steps.
XLA_ATOL = 1e-5


@pytest.fixture(scope="module")
def data(accelerator_inputs):
  return accelerator_inputs


# Oracle: the model called directly (two paths agree: padded step = direct call); against
# NumPy: test_logits_of_a_linear_model_are_numpys_for_a_full_and_a_short_batch.
def test_inference_step_runs_one_static_shape(data):
  """A short last batch is padded to the full one: one trace (one XLA program, the TPU's static
  shape) for every batch, and the padding's rows never reach the result."""
  model = keras.models.load_model(data["teacher"], compile=False)
  step = inference.InferenceStep(model, 8, jit_compile=True)
  images = np.random.default_rng(5).normal(size=(11, 16, 16, 3)).astype(np.float32)
  got = np.concatenate([step(images[:8]), step(images[8:])])
  assert got.shape == (11, NUM_CLASSES) and got.dtype == np.float32
  np.testing.assert_allclose(got, np.asarray(model(images, training=False)), atol=XLA_ATOL)
  assert step._logits.experimental_get_tracing_count() == 1  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="more than its 8"):
    step(images)


def test_logits_of_a_linear_model_are_numpys_for_a_full_and_a_short_batch():
  keras.utils.set_random_seed(3)
  model = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten(),
                            keras.layers.Dense(4)])
  kernel, bias = model.layers[-1].get_weights()
  step = inference.InferenceStep(model, 6)
  images = np.random.default_rng(4).normal(size=(9, 2, 2, 3)).astype(np.float32)
  got = np.concatenate([step(images[:6]), step(images[6:])])  # 6, then 3 padded to 6
  # Restated: x @ W + b, in float64.
  expected = images.reshape(9, -1).astype(np.float64) @ kernel + bias
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert got.dtype == np.float32 and step.batch_size == 6 and step.replicas == 1
