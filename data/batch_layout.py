"""The rows of a student batch, in plain Python (no TensorFlow): the input pipeline batches by it
and the training plan counts with it."""


def unlabeled_rows(batch_size, unlabeled_batch_ratio):
  """B*r, the pseudo-labeled rows of a student batch; raises ValueError unless a whole number
  >= 1."""
  rows = batch_size * unlabeled_batch_ratio
  if rows != int(rows) or rows < 1:
    raise ValueError(f"--batch_size * --unlabeled_batch_ratio must be a whole number >= 1, got "
                     f"{batch_size} * {unlabeled_batch_ratio}")
  return int(rows)
