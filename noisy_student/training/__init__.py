"""The training math: the reference's loss, optimizer, learning-rate schedule, weight EMA,
batch-norm recalibration and the metrics that know the batch layout."""
