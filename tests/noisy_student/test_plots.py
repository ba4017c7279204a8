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


def _drawn(monkeypatch):
  from noisy_student import plots  # pylint: disable=g-import-not-at-top
  drawn = []
  monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure))
  return plots, drawn


def test_many_classes_pool_the_confidence_histogram_and_rank_the_counts(tmp_path, monkeypatch):
  """ImageNet's 1,000 classes: one pooled histogram (the column sums) and the counts and top-1
  as ranked curves (each sorted descending), on one small figure each."""
  plots, drawn = _drawn(monkeypatch)
  rng = np.random.default_rng(0)
  histogram = rng.integers(0, 50, (1000, 20))
  before, after = rng.integers(0, 300, 1000), np.full(1000, 130)
  accuracy = {f"n{c:08d}": float(v) for c, v in enumerate(rng.uniform(0, 1, 1000))}
  plots.confidence_histograms(histogram, str(tmp_path / "c.png"), threshold=0.3)
  plots.class_counts(before, after, str(tmp_path / "k.png"))
  plots.per_class_accuracy(accuracy, str(tmp_path / "a.png"))
  pooled, counts, top1 = (figure.axes for figure in drawn)
  assert len(pooled) == len(counts) == len(top1) == 1
  np.testing.assert_array_equal([bar.get_height() for bar in pooled[0].patches],
                                histogram.sum(axis=0))
  for line, values in zip(counts[0].lines, (before, after)):
    np.testing.assert_array_equal(line.get_ydata(), sorted(values, reverse=True))
  np.testing.assert_allclose(top1[0].lines[0].get_ydata(),
                             sorted(accuracy.values(), reverse=True))
  for figure in drawn:
    assert tuple(figure.get_size_inches()) == (5, 3)


def test_up_to_fifty_classes_keep_one_panel_or_bar_per_class(tmp_path, monkeypatch):
  plots, drawn = _drawn(monkeypatch)
  names = [f"class{c}" for c in range(50)]
  plots.confidence_histograms(np.ones((50, 10)), str(tmp_path / "c.png"), class_names=names)
  plots.class_counts(np.arange(50), np.arange(50), str(tmp_path / "k.png"), class_names=names)
  panels, (bars,) = drawn[0].axes, drawn[1].axes
  assert [ax.get_title() for ax in panels] == names
  assert len(bars.patches) == 2 * 50


def test_a_thousand_class_plot_is_a_small_png(tmp_path):
  """The file itself: 5 x 3 inches at _save's 110 dpi, not one inch per class."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from noisy_student import plots  # pylint: disable=g-import-not-at-top
  path = plots.class_counts(np.arange(1000), np.full(1000, 7), str(tmp_path / "k.png"))
  with Image.open(path) as image:
    assert image.size == (5 * 110, 3 * 110)
