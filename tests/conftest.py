"""Fixtures more than one test file uses."""

import os

import pytest


@pytest.fixture
def plot_labels(monkeypatch):
  """{png name: [(x tick labels, title) per axes]} of every report plot saved during the test,
  read from the figure just before it is written."""
  from noisy_student import plots  # pylint: disable=g-import-not-at-top  (matplotlib is slow)
  seen = {}
  save = plots._save  # pylint: disable=protected-access

  def capture(figure, path):
    seen[os.path.basename(path)] = [([t.get_text() for t in ax.get_xticklabels()], ax.get_title())
                                    for ax in figure.axes]
    return save(figure, path)

  monkeypatch.setattr(plots, "_save", capture)
  return seen
