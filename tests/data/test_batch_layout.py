"""data/batch_layout.py: the pseudo-labeled rows of a student batch, against plain arithmetic."""

import pytest

from data import batch_layout


@pytest.mark.parametrize("batch_size, ratio, expected", [(8, 2, 16), (10, 0.5, 5), (3, 1, 3),
                                                         (128, 7, 896), (4, 0.25, 1)])
def test_unlabeled_rows_are_batch_size_times_the_ratio(batch_size, ratio, expected):
  assert batch_layout.unlabeled_rows(batch_size, ratio) == expected


@pytest.mark.parametrize("batch_size, ratio", [(10, 0.25), (8, 0), (3, 0.2), (5, 1.1)])
def test_a_fraction_of_a_row_or_none_is_an_error_naming_the_flags(batch_size, ratio):
  with pytest.raises(ValueError, match=rf"--batch_size \* --unlabeled_batch_ratio must be a whole "
                     rf"number >= 1, got {batch_size} \* {ratio}"):
    batch_layout.unlabeled_rows(batch_size, ratio)
