"""noisy_student/plots.py: what each report plot draws, read back from the figure."""

import numpy as np



def test_training_curves_are_drawn_against_data_epochs(tmp_path, monkeypatch):
  """--epochs is data epochs on the curves too: each history row at its steps done over the
  steps of a data epoch (a short last Keras epoch lands at its own fraction), evaluations at
  theirs."""
  from noisy_student import plots  # pylint: disable=g-import-not-at-top
  drawn = []
  monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure))
  history = {"loss": [2.0, 1.5, 1.2], "accuracy": [0.3, 0.5, 0.6],
             "learning_rate": [0.1, 0.1, 0.05], "data_epoch": [4 / 3.8, 8 / 3.8, 9 / 3.8]}
  evaluations = {"split": "validation", "points": [{"keras_epoch": 3, "data_epochs": 9 / 3.8,
                                                    "top1": 0.55}]}
  plots.training_curves(history, str(tmp_path / "curves.png"), evaluations=evaluations)
  left, right = drawn[0].axes[:2]
  assert left.get_xlabel() == right.get_xlabel() == "data epoch"
  np.testing.assert_allclose(left.lines[0].get_xdata(), history["data_epoch"])
  np.testing.assert_allclose(right.lines[1].get_xdata(), [9 / 3.8])
