"""Robustness summaries in plain NumPy (no TensorFlow): what the robustness phase computes from
the errors, predictions and logits its evaluation loops collect.

- Relative figures: CE/mCE and flip-rate ratios against any earlier result (e.g. the teacher's).
- The published normalisation: ImageNet-C's CE/mCE and ImageNet-P's FR/mFR and T5D/mT5D divided
  by AlexNet's published figures (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness
  to Common Corruptions and Perturbations", ICLR 2019), with the formulas of that paper.
- ImageNet-A's 200 classes inside a 1,000-class model's logits.

Errors, accuracies, flip probabilities and the normalised figures are fractions (the papers print
them times 100: an mCE of 0.283 is the Noisy Student paper's 28.3). Dict keys are strings so that
results survive a JSON round trip (severity "3").
"""

import numpy as np

# ---- The published AlexNet figures --------------------------------------------------------------
# Source: Hendrycks & Dietterich (ICLR 2019), appendices D and E (read in the September 2018 text
# that hendrycks/robustness keeps as new_draft.pdf): AlexNet's clean top-1 error 43.5%, its mean
# top-1 error per ImageNet-C corruption over severities 1-5, its ImageNet-P flip probability
# FP and unnormalised top-5 distance uT5D per perturbation. The per-severity errors of the 15
# standard corruptions are the ones ImageNet-C's mCE is computed with (as listed in timm's
# ImageNet-C evaluation utilities); their means are the paper's appendix-D figures (checked in
# tests/noisy_student/test_robustness_metrics.py). For the 4 extra corruptions only the paper's
# means, to 0.1%, are published.
ALEXNET_CLEAN_ERROR = 0.435

# The 15 corruptions whose CEs the mCE averages, in the paper's order.
IMAGENET_C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
    "pixelate", "jpeg_compression")
# Released beside them (validation corruptions): reported, never in the mCE.
IMAGENET_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

# AlexNet's top-1 error at severities 1-5.
ALEXNET_C_ERRORS = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
# AlexNet's mean top-1 error over severities 1-5 (appendix D).
ALEXNET_C_EXTRA_MEAN_ERRORS = {"speckle_noise": 0.845, "gaussian_blur": 0.787, "spatter": 0.718,
                               "saturate": 0.658}

# The 10 perturbations whose flip rates the mFR (and mT5D) averages, in the paper's order.
IMAGENET_P_PERTURBATIONS = ("gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow",
                            "brightness", "translate", "rotate", "tilt", "scale")
IMAGENET_P_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "shear")
# AlexNet's flip probability FP (appendix E: 23.65% ... as fractions).
ALEXNET_P_FLIP_PROBABILITY = {
    "gaussian_noise": 0.2365, "shot_noise": 0.3006, "motion_blur": 0.0930, "zoom_blur": 0.0594,
    "snow": 0.1193, "brightness": 0.0489, "translate": 0.1101, "rotate": 0.1310, "tilt": 0.0705,
    "scale": 0.2353, "speckle_noise": 0.1865, "gaussian_blur": 0.0278, "spatter": 0.0505,
    "shear": 0.1066}
# AlexNet's unnormalised top-5 distance uT5D (appendix E).
ALEXNET_P_TOP5_DISTANCE = {
    "gaussian_noise": 4.77, "shot_noise": 5.76, "motion_blur": 1.93, "zoom_blur": 1.34,
    "snow": 2.42, "brightness": 1.19, "translate": 2.63, "rotate": 2.95, "tilt": 1.75,
    "scale": 4.48, "speckle_noise": 3.89, "gaussian_blur": 0.70, "spatter": 1.26, "shear": 2.48}
# Noise sequences are independent draws around their clean first frame, so every frame is
# compared with the first; the others are temporal (frame i perturbs frame i - 1): each frame is
# compared with the one before (ImageNet-P/test.py: 'noise' in the name, difficulty 1).
IMAGENET_P_NOISE = ("gaussian_noise", "shot_noise", "speckle_noise")

TOP5 = 5


def ratio(value, baseline, what):
  if baseline == 0:
    raise ValueError(f"the baseline's {what} is 0, so the ratio to it is undefined")
  return value / baseline


# ---- Relative to any baseline (the on-the-fly corruptions and perturbations) -------------------

def mean_corruption_error(errors, baseline_errors=None):
  """Summarises `{corruption: {severity: error}}`.

  Without a baseline: the mean error per corruption and over everything. With one, as Hendrycks &
  Dietterich: CE_c = sum_s E_{s,c} / sum_s E_{s,c}(baseline), mCE = mean_c CE_c. The baseline needs
  every (corruption, severity) that `errors` has.

  Returns:
    {"corruption_error": {c: mean_s E_{s,c}}, "mean_error": mean over c and s} and, with a
    baseline, {"ce": {c: CE_c}, "mce": mCE}.
  """
  if not errors:
    raise ValueError("no corruption errors to summarise")
  per_corruption = {c: float(np.mean(list(by_severity.values())))
                    for c, by_severity in errors.items()}
  summary = {"corruption_error": per_corruption,
             "mean_error": float(np.mean(list(per_corruption.values())))}
  if baseline_errors is None:
    return summary
  ce = {}
  for corruption, by_severity in errors.items():
    baseline = {str(s): e for s, e in baseline_errors.get(corruption, {}).items()}
    missing = [s for s in by_severity if str(s) not in baseline]
    if missing:
      raise ValueError(f"the baseline has no error for {corruption} at severity {missing[0]}")
    ce[corruption] = ratio(sum(by_severity.values()),
                           sum(baseline[str(s)] for s in by_severity), f"{corruption} error")
  summary.update(ce=ce, mce=float(np.mean(list(ce.values()))))
  return summary


def flip_rate(predictions, compare_to="previous"):
  """The fraction of frame pairs whose top-1 prediction differs (ImageNet-P's flip probability).

  As `flip_prob` in hendrycks/robustness ImageNet-P/test.py at difficulty 1: "previous" compares
  consecutive frames (temporal sequences); "first" compares every frame with the first (noise
  sequences). Every sequence has the same length, so the mean over sequences of per-sequence
  rates is the mean over all pairs.

  Args:
    predictions: int array `[N, T]`, N sequences of T >= 2 frames.
    compare_to: "previous" or "first".
  """
  predictions = np.asarray(predictions)
  if predictions.ndim != 2 or predictions.shape[1] < 2 or predictions.shape[0] == 0:
    raise ValueError(f"predictions must be [N, T] with N >= 1, T >= 2, got {predictions.shape}")
  return float(_flips(predictions, compare_to).mean())


def _flips(predictions, compare_to):
  if compare_to == "previous":
    return predictions[..., 1:] != predictions[..., :-1]
  if compare_to == "first":
    return predictions[..., 1:] != predictions[..., :1]
  raise ValueError(f"compare_to must be 'previous' or 'first', got {compare_to!r}")


def mean_flip_rate(rates, baseline_rates=None):
  """Summarises `{perturbation: flip rate}`; with a baseline, ImageNet-P's normalised form:
  FR_p / FR_p(baseline) per type and mFR, their mean.

  Returns:
    {"mean_flip_rate"} and, with a baseline, {"relative_flip_rates": {p: ratio}, "mfr"}.
  """
  if not rates:
    raise ValueError("no flip rates to summarise")
  summary = {"mean_flip_rate": float(np.mean(list(rates.values())))}
  if baseline_rates is None:
    return summary
  missing = [p for p in rates if p not in baseline_rates]
  if missing:
    raise ValueError(f"the baseline has no flip rate for {missing[0]}")
  relative = {p: ratio(rate, baseline_rates[p], f"{p} flip rate") for p, rate in rates.items()}
  summary.update(relative_flip_rates=relative, mfr=float(np.mean(list(relative.values()))))
  return summary


# ---- ImageNet-A -----------------------------------------------------------------------------

def subset_logits(logits, indices):
  """The logits of the classes `indices` only, in that order: `[N, C] -> [N, len(indices)]`.
  ImageNet-A's top-1 is the argmax over its 200 classes' logits of a 1,000-class model
  (natural-adv-examples/eval.py: `output[:, indices_in_1k]`)."""
  logits = np.asarray(logits)
  indices = np.asarray(indices, np.int64)
  if logits.ndim != 2 or (len(indices) and indices.max() >= logits.shape[1]):
    raise ValueError(f"logits {logits.shape} do not have the classes {indices.max()} needs")
  return logits[:, indices]


# ---- ImageNet-C, normalised by AlexNet -------------------------------------------------------

def _alexnet_error_sum(corruption, severities):
  if corruption in ALEXNET_C_ERRORS:
    return sum(ALEXNET_C_ERRORS[corruption][int(s) - 1] for s in severities)
  return len(severities) * ALEXNET_C_EXTRA_MEAN_ERRORS[corruption]


def imagenet_c_summary(errors, clean_error=None):
  """CE per corruption and mCE as published: CE_c = sum_s E_{s,c} / sum_s E_{s,c}(AlexNet).

  The mCE averages the 15 standard corruptions' CEs; the 4 extra ones get a CE beside it (their
  AlexNet sum is 5 x the published mean, which is given to 0.1%). A corruption evaluated at some
  severities only is divided by AlexNet's errors at those severities; the summary then says it is
  not the published mCE (`complete` is false, `missing` lists what is absent).

  Args:
    errors: {corruption: {severity: top-1 error}} (severity 1-5, int or str).
    clean_error: the model's clean ImageNet top-1 error, for the paper's relative CE and
      "Relative mCE": sum_s (E_{s,c} - E_clean) / sum_s (E_{s,c}(AlexNet) - E_clean(AlexNet)),
      the clean error taken once per severity, which is what reproduces the paper's table of
      relative CEs (its formula's text writes it once in all); None leaves them out.

  Returns:
    {"ce": {c: CE_c}, "mce" (None without any standard corruption), "extra_ce": {c: CE_c},
     "mean_error": mean of the standard corruptions' errors, "complete", "missing": ["c/s"]} and,
     with `clean_error`, {"relative_ce", "relative_mce"}.
  """
  known = IMAGENET_C_CORRUPTIONS + IMAGENET_C_EXTRA
  unknown = sorted(set(errors) - set(known))
  if unknown:
    raise ValueError(f"{unknown[0]!r} is not an ImageNet-C corruption; they are "
                     f"{', '.join(known)}")
  ce, extra_ce, relative, standard_errors = {}, {}, {}, []
  for corruption, by_severity in errors.items():
    severities = sorted(int(s) for s in by_severity)
    if not severities or severities[0] < 1 or severities[-1] > 5:
      raise ValueError(f"{corruption}: severities must be 1-5, got {severities}")
    model_sum = sum(float(e) for e in by_severity.values())
    alexnet_sum = _alexnet_error_sum(corruption, severities)
    value = ratio(model_sum, alexnet_sum, f"{corruption} error")
    if corruption in IMAGENET_C_EXTRA:
      extra_ce[corruption] = value
      continue
    ce[corruption] = value
    standard_errors.extend(float(e) for e in by_severity.values())
    if clean_error is not None:
      count = len(severities)
      relative[corruption] = ratio(model_sum - count * clean_error,
                                   alexnet_sum - count * ALEXNET_CLEAN_ERROR,
                                   f"{corruption} error above the clean error")
  missing = [f"{c}/{s}" for c in IMAGENET_C_CORRUPTIONS for s in range(1, 6)
             if str(s) not in {str(k) for k in errors.get(c, {})}]
  summary = {"ce": ce, "mce": float(np.mean(list(ce.values()))) if ce else None,
             "extra_ce": extra_ce,
             "mean_error": float(np.mean(standard_errors)) if standard_errors else None,
             "complete": not missing, "missing": missing}
  if clean_error is not None:
    summary.update(relative_ce=relative,
                   relative_mce=float(np.mean(list(relative.values()))) if relative else None)
  return summary


# ---- ImageNet-P, normalised by AlexNet -------------------------------------------------------

def _ranking(logits):
  """Classes by descending logit, ties to the lower index (scipy's rankdata 'ordinal' on -logits,
  which ImageNet-P/test.py ranks with)."""
  return np.argsort(-np.asarray(logits, np.float64), axis=-1, kind="stable")


def top5_distance(reference_logits, logits):
  """The paper's top-5 distance d(pi(x), pi(x')) between two frames' rankings, per row.

  With sigma(i) the rank in x' of the class ranked i in x, d = sum_{i=1..5} sum_{j = min(i,
  sigma(i)) + 1}^{max(i, sigma(i))} 1(1 <= j - 1 <= 5), which is sum_i |(i - 1) - min(sigma(i) -
  1, 5)|: how far each of x's top 5 moved, counted within the first six places.

  Args:
    reference_logits, logits: `[N, C]`, C >= 5.
  Returns:
    int array `[N]`.
  """
  reference_logits, logits = np.asarray(reference_logits), np.asarray(logits)
  if reference_logits.shape != logits.shape or logits.ndim != 2 or logits.shape[1] < TOP5:
    raise ValueError(f"two [N, C >= 5] logits are needed, got {reference_logits.shape} and "
                     f"{logits.shape}")
  top = _ranking(reference_logits)[:, :TOP5]
  rank = np.argsort(_ranking(logits), axis=-1)  # class -> its 0-based place in x'
  moved = np.take_along_axis(rank, top, axis=1)
  return np.abs(np.arange(TOP5)[None, :] - np.minimum(moved, TOP5)).sum(axis=1)


def sequence_stability(logits, noise):
  """Flip probability and mean top-5 distance of one sequence's frames `[T, C]` (T >= 2), each
  frame against the first (`noise`) or against the one before."""
  logits = np.asarray(logits)
  if logits.ndim != 2 or logits.shape[0] < 2:
    raise ValueError(f"a sequence needs [T >= 2, C] logits, got {logits.shape}")
  reference = np.repeat(logits[:1], len(logits) - 1, axis=0) if noise else logits[:-1]
  flips = _flips(logits.argmax(axis=1), "first" if noise else "previous")
  return float(flips.mean()), float(top5_distance(reference, logits[1:]).mean())


def imagenet_p_summary(flip_probabilities, top5_distances):
  """FR_p = FP_p / FP_p(AlexNet) and T5D_p = uT5D_p / uT5D_p(AlexNet) per perturbation; mFR and
  mT5D average the 10 standard perturbations present; the 4 extra ones are reported beside.

  Args:
    flip_probabilities, top5_distances: {perturbation: FP} and {perturbation: uT5D}, each the mean
      over sequences of the per-sequence mean (`sequence_stability`), as ImageNet-P/test.py.

  Returns:
    {"flip_rate": {p: FR}, "mfr", "top5_distance": {p: T5D}, "mt5d", "extra_flip_rate",
     "extra_top5_distance", "complete", "missing": [p]}; mFR/mT5D are None without any standard
     perturbation.
  """
  known = IMAGENET_P_PERTURBATIONS + IMAGENET_P_EXTRA
  unknown = sorted(set(flip_probabilities) - set(known))
  if unknown:
    raise ValueError(f"{unknown[0]!r} is not an ImageNet-P perturbation; they are "
                     f"{', '.join(known)}")

  def normalised(values, alexnet, what):
    standard = {p: ratio(values[p], alexnet[p], f"{p} {what}")
                for p in IMAGENET_P_PERTURBATIONS if p in values}
    extra = {p: ratio(values[p], alexnet[p], f"{p} {what}")
             for p in IMAGENET_P_EXTRA if p in values}
    return standard, extra, float(np.mean(list(standard.values()))) if standard else None

  fr, extra_fr, mfr = normalised(flip_probabilities, ALEXNET_P_FLIP_PROBABILITY, "flip rate")
  t5d, extra_t5d, mt5d = normalised(top5_distances, ALEXNET_P_TOP5_DISTANCE, "top-5 distance")
  missing = [p for p in IMAGENET_P_PERTURBATIONS if p not in flip_probabilities]
  return {"flip_rate": fr, "mfr": mfr, "top5_distance": t5d, "mt5d": mt5d,
          "extra_flip_rate": extra_fr, "extra_top5_distance": extra_t5d,
          "complete": not missing, "missing": missing}


# ---- What the command prints -----------------------------------------------------------------

def headline(results):
  """The few figures of a robustness result worth a terminal line: ImageNet-A top-1, ImageNet-C
  mCE, ImageNet-P mFR/mT5D, the on-the-fly sets' mean error, mCE, flip rate and mFR, FGSM
  accuracy by epsilon. Keys absent from `results` are left out."""
  shown = {}
  sections = (("imagenet_a", ("top1", "top5")),
              ("imagenet_c", ("mce", "relative_mce", "complete")),
              ("imagenet_p", ("mfr", "mt5d", "complete")),
              ("corruptions", ("mean_error", "mce")),
              ("perturbations", ("mean_flip_rate", "mfr")),
              ("corrupted_data", ("mean_error", "mce")))
  for section, keys in sections:
    for key in keys:
      value = (results.get(section) or {}).get(key)
      if value is not None:
        shown[f"{section}_{key}"] = value
  if results.get("fgsm"):
    shown["fgsm_accuracy"] = results["fgsm"]["accuracy"]
  return shown
