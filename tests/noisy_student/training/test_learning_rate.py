"""noisy_student/training/learning_rate.py: the arithmetic of the schedule (no TensorFlow) against
the SVHN recipe's published figures and its refusals."""

import re

import pytest

from noisy_student.training import learning_rate


def test_final_learning_rate_matches_svhn_recipe():
  # noisy-student-reference.md section 6.1: batch 128, 69,257 images, 109,474 steps,
  # --final_base_lr=0.0002 -> decay every 1.3716 epochs (742.1 steps), peak 0.008.
  steps_per_epoch = 69257 / 128
  decay_epochs = learning_rate.decay_epochs_for_final_learning_rate(
      0.016, 0.0002, total_epochs=109474 / steps_per_epoch)
  assert decay_epochs == pytest.approx(1.3716, abs=1e-4)
  assert decay_epochs * steps_per_epoch == pytest.approx(742.1, abs=0.1)
  assert learning_rate.scaled_learning_rate(0.016, 128) == pytest.approx(0.008)


def test_final_learning_rate_inside_the_warm_up_is_an_error_naming_the_flags():
  with pytest.raises(ValueError, match=r"run is 3 epochs and --warmup_epochs=5"):
    learning_rate.decay_epochs_for_final_learning_rate(0.016, 0.0002, total_epochs=3)


@pytest.mark.parametrize("final, decay_rate, message", [
    (0.0, 0.97, "above 0 and below --base_learning_rate=0.016, got 0"),
    (0.016, 0.97, "got 0.016"),
    (0.032, 0.97, "got 0.032"),
    (0.0002, 1.0, "--lr_decay_factor between 0 and 1, got 1"),
])
def test_a_final_learning_rate_out_of_reach_is_an_error_naming_the_flags(final, decay_rate,
                                                                          message):
  with pytest.raises(ValueError, match=re.escape(message)):
    learning_rate.decay_epochs_for_final_learning_rate(0.016, final, total_epochs=100,
                                                   decay_rate=decay_rate)
