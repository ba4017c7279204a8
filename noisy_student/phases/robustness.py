"""Robustness of a classifier: common corruptions (mCE), perturbation flip rates (mFR) and FGSM.

The Noisy Student paper (Xie et al. 2020, section 4.4) reports, besides accuracy, ImageNet-C mCE,
ImageNet-P mean flip rate and accuracy under FGSM. These functions measure the same quantities on
any labeled evaluation set, corrupting it on the fly (`data.corruptions`), so that a student can be
compared with its teacher.

Conventions shared by every function:
- `dataset` yields `(images, labels)` batches: uint8 `[B, H, W, 3]` already resized/cropped to the
  model's input size, and int class ids `[B]`.
- `normalize` maps float32 pixels in [0, 255] to what `model` takes; `model(x, training=False)`
  returns logits. Corruptions, perturbations and attacks all act on [0, 255] pixels, before it.
- Errors, accuracies and flip rates are fractions in [0, 1] (the paper prints them as percent);
  CE and mCE are ratios to a baseline (the paper's baseline is AlexNet; here, any earlier result,
  e.g. the teacher's).
- Dict keys are strings so that results survive a JSON round trip unchanged (severity "3",
  epsilon "4").
"""

import dataclasses
import json
import os
import zlib

import numpy as np
import tensorflow as tf

from data import convert
from data import corruptions as corruptions_lib
from data import manifest as manifest_lib
from data import pipeline
from data import preprocess
from data import records
from noisy_student import inference
from noisy_student import plots

KINDS = ("corruptions", "perturbations", "fgsm")
DEFAULT_EPSILONS = (1, 2, 4, 8)


def _predictor(model, normalize):
  """Top-1 classes of uint8 images: the shared inference step (the model in inference mode)
  after `normalize`."""
  steps = {}

  def predict(images):
    size = int(images.shape[0])
    if not steps or size > steps["step"].batch_size:  # the first batch is the largest
      steps["step"] = inference.InferenceStep(model, size)
    logits = steps["step"](normalize(tf.cast(images, tf.float32)))
    return tf.constant(np.argmax(logits, axis=-1).astype(np.int32))
  return predict


def _labels(labels):
  return tf.cast(tf.reshape(labels, [-1]), tf.int32)


def _error_rate(predict, dataset):
  wrong, total = 0, 0
  for images, labels in dataset:
    wrong += int(tf.reduce_sum(tf.cast(predict(images) != _labels(labels), tf.int32)))
    total += int(tf.shape(labels)[0])
  if total == 0:
    raise ValueError("the evaluation dataset is empty")
  return wrong / total, total


def _batch_seeds(seed, name):
  """Seed for batch i of one corruption: the same at every severity (common random numbers, so
  that error curves over severity differ only by the severity) and independent of which other
  corruptions are evaluated."""
  base = tf.constant([seed, zlib.crc32(name.encode())], tf.int64)
  return lambda index: tf.random.experimental.stateless_fold_in(base, index)


def _check_names(names, known, what):
  unknown = [name for name in names if name not in known]
  if unknown:
    raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(map(str, known))}")


def corruption_errors(model, dataset, normalize, *, corruptions=tuple(corruptions_lib.CORRUPTIONS),
                      severities=corruptions_lib.SEVERITIES, seed=0,
                      table=corruptions_lib.DEFAULT_TABLE):
  """Top-1 error on every corruption at every severity, corrupting `dataset` on the fly.

  Deterministic given `seed` and the dataset's batching (each batch is corrupted with its own seed).

  Args:
    model: a Keras model returning logits for `normalize`d images.
    dataset: `(uint8 images [B, H, W, 3], int labels [B])` batches at the model's input size.
    normalize: float32 pixels in [0, 255] -> the model's input.
    corruptions: names from `data.corruptions.CORRUPTIONS`.
    severities: ints in 1..5.
    seed: int.
    table: "cifar10-c" or "imagenet-c" (`data.corruptions.SEVERITY_TABLES`).

  Returns:
    {"table", "seed", "severities": [int], "clean_error", "num_examples",
     "errors": {corruption: {str(severity): error}}}.
  """
  _check_names(corruptions, corruptions_lib.CORRUPTIONS, "corruption")
  _check_names([table], corruptions_lib.SEVERITY_TABLES, "severity table")
  _check_names(severities, corruptions_lib.SEVERITIES, "severity")
  predict = _predictor(model, normalize)
  clean_error, num_examples = _error_rate(predict, dataset)
  errors = {}
  for name in corruptions:
    batch_seed = _batch_seeds(seed, name)
    errors[name] = {}
    for severity in severities:
      corrupted = dataset.enumerate().map(
          lambda index, batch, name=name, severity=severity, batch_seed=batch_seed: (
              corruptions_lib.corrupt(batch[0], name, severity, batch_seed(index), table=table),
              batch[1]),
          num_parallel_calls=tf.data.AUTOTUNE)
      errors[name][str(severity)] = _error_rate(predict, corrupted)[0]
  return {"table": table, "seed": int(seed), "severities": [int(s) for s in severities],
          "clean_error": clean_error, "num_examples": num_examples, "errors": errors}


def _ratio(value, baseline, what):
  if baseline == 0:
    raise ValueError(f"the baseline's {what} is 0, so the ratio to it is undefined")
  return value / baseline


def mean_corruption_error(errors, baseline_errors=None):
  """Summarises `{corruption: {severity: error}}` (the "errors" of `corruption_errors`).

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
    ce[corruption] = _ratio(sum(by_severity.values()),
                            sum(baseline[str(s)] for s in by_severity), f"{corruption} error")
  summary.update(ce=ce, mce=float(np.mean(list(ce.values()))))
  return summary


def flip_rate(predictions, compare_to="previous"):
  """The fraction of frame pairs whose top-1 prediction differs (ImageNet-P's flip probability).

  As `flip_prob` in hendrycks/robustness ImageNet-P/test.py at difficulty 1: "previous" compares
  consecutive frames (geometric sequences); "first" compares every frame with the first (noise
  sequences, whose frames are independent draws around the clean image). Every sequence has the
  same length, so the mean over sequences of per-sequence rates is the mean over all pairs.

  Args:
    predictions: int array `[N, T]`, N sequences of T >= 2 frames.
    compare_to: "previous" or "first".
  """
  predictions = np.asarray(predictions)
  if predictions.ndim != 2 or predictions.shape[1] < 2 or predictions.shape[0] == 0:
    raise ValueError(f"predictions must be [N, T] with N >= 1, T >= 2, got {predictions.shape}")
  if compare_to == "previous":
    flips = predictions[:, 1:] != predictions[:, :-1]
  elif compare_to == "first":
    flips = predictions[:, 1:] != predictions[:, :1]
  else:
    raise ValueError(f"compare_to must be 'previous' or 'first', got {compare_to!r}")
  return float(flips.mean())


def flip_rates(model, dataset, normalize, *,
               perturbations=tuple(corruptions_lib.PERTURBATIONS), num_frames=None, seed=0):
  """Flip rate of the model's top-1 prediction along perturbation sequences of every image.

  Args:
    model, dataset, normalize: as for `corruption_errors` (labels are not used).
    perturbations: names from `data.corruptions.PERTURBATIONS`.
    num_frames: frames per sequence for every type; None uses CIFAR-10-P's per type.
    seed: int (only noise sequences are random).

  Returns:
    {"seed", "num_examples", "num_frames": {p: T}, "compare_to": {p: "previous" | "first"},
     "flip_rates": {p: rate}, "mean_flip_rate": mean over p}.
  """
  _check_names(perturbations, corruptions_lib.PERTURBATIONS, "perturbation")
  predict = _predictor(model, normalize)
  rates, frames_used, compare = {}, {}, {}
  num_examples = 0
  for name in perturbations:
    spec = corruptions_lib.PERTURBATIONS_TABLE[name]
    frames_used[name] = spec.num_frames if num_frames is None else num_frames
    compare[name] = spec.compare_to
    batch_seed = _batch_seeds(seed, name)
    sequences = dataset.enumerate().map(
        lambda index, batch, name=name, batch_seed=batch_seed: corruptions_lib.perturb(
            batch[0], name, frames_used[name], batch_seed(index)),
        num_parallel_calls=tf.data.AUTOTUNE)
    predictions = []
    for frames in sequences:
      # One forward pass per frame keeps the caller's batch size as the unit of memory.
      predictions.append(np.stack([predict(frames[:, t]).numpy()
                                   for t in range(frames.shape[1])], axis=1))
    predictions = np.concatenate(predictions)
    num_examples = len(predictions)
    rates[name] = flip_rate(predictions, spec.compare_to)
  return {"seed": int(seed), "num_examples": num_examples, "num_frames": frames_used,
          "compare_to": compare, "flip_rates": rates,
          "mean_flip_rate": float(np.mean(list(rates.values())))}


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
  relative = {p: _ratio(rate, baseline_rates[p], f"{p} flip rate") for p, rate in rates.items()}
  summary.update(relative_flip_rates=relative, mfr=float(np.mean(list(relative.values()))))
  return summary


def _input_gradient_sign(model, normalize, x, labels):
  with tf.GradientTape() as tape:
    tape.watch(x)
    logits = tf.cast(model(normalize(x), training=False), tf.float32)
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
  return tf.sign(tape.gradient(loss, x)), logits


def fgsm_attack(model, images, labels, normalize, epsilon):
  """One-step FGSM (Goodfellow et al. 2015): clip(x + epsilon * sign(grad_x loss), 0, 255).

  The loss is the softmax cross-entropy with the true labels, differentiated through `normalize`
  and the model in inference mode. `epsilon` is on the [0, 255] pixel scale.

  Returns:
    float32 `[B, H, W, 3]` in [0, 255] (not rounded: a fractional epsilon stays fractional).
  """
  x = tf.cast(images, tf.float32)
  sign, _ = _input_gradient_sign(model, normalize, x, _labels(labels))
  return tf.clip_by_value(x + float(epsilon) * sign, 0.0, 255.0)


def _epsilon_key(epsilon):
  return f"{float(epsilon):g}"


def fgsm_accuracy(model, dataset, normalize, epsilons=DEFAULT_EPSILONS):
  """Top-1 accuracy under `fgsm_attack` at each epsilon (pixels on the [0, 255] scale).

  Args:
    model, dataset, normalize: as for `corruption_errors`; gradients flow through `normalize`.
    epsilons: non-negative numbers on the [0, 255] pixel scale.

  Returns:
    {"epsilon_scale": "pixels in [0, 255]", "num_examples", "clean_accuracy",
     "accuracy": {str(epsilon): accuracy}}.
  """
  epsilons = [float(e) for e in epsilons]
  if any(e < 0 for e in epsilons):
    raise ValueError(f"epsilons must be >= 0, got {epsilons}")

  @tf.function(reduce_retracing=True)
  def correct_counts(images, labels):
    x = tf.cast(images, tf.float32)
    sign, logits = _input_gradient_sign(model, normalize, x, labels)
    counts = [tf.argmax(logits, axis=-1, output_type=tf.int32) == labels]
    for epsilon in epsilons:
      adversarial = tf.clip_by_value(x + epsilon * sign, 0.0, 255.0)
      logits = model(normalize(adversarial), training=False)
      counts.append(tf.argmax(logits, axis=-1, output_type=tf.int32) == labels)
    return tf.reduce_sum(tf.cast(tf.stack(counts), tf.int32), axis=1)

  correct, total = np.zeros(len(epsilons) + 1, np.int64), 0
  for images, labels in dataset:
    correct += correct_counts(images, _labels(labels)).numpy()
    total += int(tf.shape(labels)[0])
  if total == 0:
    raise ValueError("the evaluation dataset is empty")
  return {"epsilon_scale": "pixels in [0, 255]", "num_examples": total,
          "clean_accuracy": float(correct[0] / total),
          "accuracy": {_epsilon_key(e): float(c / total) for e, c in zip(epsilons, correct[1:])}}


def _baseline_section(baseline, kind):
  if baseline is None:
    return None
  baseline = baseline.get("robustness", baseline)  # a whole metrics.json is fine too
  return baseline.get(kind)


def evaluate_robustness(model, dataset, normalize, kinds, *, baseline=None, seed=0,
                        corruptions=tuple(corruptions_lib.CORRUPTIONS),
                        severities=corruptions_lib.SEVERITIES, table=corruptions_lib.DEFAULT_TABLE,
                        perturbations=tuple(corruptions_lib.PERTURBATIONS), num_frames=None,
                        epsilons=DEFAULT_EPSILONS):
  """Runs the requested robustness evaluations and returns one JSON-able dict.

  Args:
    kinds: some of "corruptions", "perturbations", "fgsm" (a sequence, or one comma-separated
      string as the --robustness flag gives).
    baseline: an earlier result of this function (e.g. the teacher's), or a metrics.json holding it
      under "robustness"; when it has the section, corruptions gain CE/mCE and perturbations the
      relative flip rates and mFR.

  Returns:
    {"corruptions": corruption_errors(...) | mean_corruption_error(...),
     "perturbations": flip_rates(...) | mean_flip_rate(...),
     "fgsm": fgsm_accuracy(...)}, with only the requested kinds.
  """
  kinds = [k.strip() for k in kinds.split(",") if k.strip()] if isinstance(kinds, str) else kinds
  _check_names(kinds, KINDS, "robustness kind")
  results = {}
  if "corruptions" in kinds:
    result = corruption_errors(model, dataset, normalize, corruptions=corruptions,
                               severities=severities, seed=seed, table=table)
    base = _baseline_section(baseline, "corruptions")
    result.update(mean_corruption_error(result["errors"], base.get("errors") if base else None))
    results["corruptions"] = result
  if "perturbations" in kinds:
    result = flip_rates(model, dataset, normalize, perturbations=perturbations,
                        num_frames=num_frames, seed=seed)
    base = _baseline_section(baseline, "perturbations")
    result.update(mean_flip_rate(result["flip_rates"], base.get("flip_rates") if base else None))
    results["perturbations"] = result
  if "fgsm" in kinds:
    results["fgsm"] = fgsm_accuracy(model, dataset, normalize, epsilons)
  return results


def table_for(image_size, table="auto"):
  """The corruption severity table: "auto" takes ImageNet-C's for inputs of 128 pixels and more
  (its parameters are for 224-pixel images), CIFAR-10-C's below."""
  if table == "auto":
    return "imagenet-c" if image_size >= 128 else "cifar10-c"
  _check_names([table], corruptions_lib.SEVERITY_TABLES, "severity table")
  return table


def premade_corruption_errors(model, root, preprocess_config, converted_dir, *, class_names=None,
                              batch_size=inference.BATCH_SIZE, num_shards=4):
  """Top-1 errors on a pre-made corrupted set in the ImageNet-C folder layout.

  Each `<root>/<corruption>/<severity>/` folder (labeled: one sub-folder per class, checked by
  `data.corruptions.list_corrupted_folders`) is converted once by the data converter into
  `<converted_dir>/<corruption>/<severity>/` (a rerun reuses finished conversions) and evaluated
  without a crop: the images are already the test crops (ImageNet-C: 224x224), so they are only
  resized when their size differs from the model's.

  Args:
    class_names: label order (e.g. the clean eval set's manifest class names); None takes the
      class folders in sorted name order. Either way the count must be the model's.

  Returns:
    {"root", "errors": {c: {"s": error}}, "num_examples": {c: {"s": n}}} (the "errors" take
    `mean_corruption_error`).
  """
  folders = corruptions_lib.list_corrupted_folders(root)
  num_classes = int(model.output.shape[-1])
  no_crop = dataclasses.replace(preprocess_config, small_image=True)
  predict = _predictor(model, lambda images: preprocess.normalize(images, preprocess_config))
  errors, counts = {}, {}
  for folder in folders:
    output = os.path.join(converted_dir, folder.corruption, str(folder.severity))
    manifest = manifest_lib.load_manifest(output)  # a finished conversion is reused
    if manifest is None:
      manifest = convert.convert("folder", folder.path, output, split="test",
                                 num_shards=num_shards, class_names=class_names)
    if manifest["num_classes"] != num_classes:
      raise ValueError(f"{folder.path} has {manifest['num_classes']} classes but the model "
                       f"{num_classes}")
    error, total = _error_rate(predict, pipeline.eval_dataset(output, no_crop,
                                                              batch_size=batch_size,
                                                              normalized=False))
    errors.setdefault(folder.corruption, {})[str(folder.severity)] = float(error)
    counts.setdefault(folder.corruption, {})[str(folder.severity)] = int(total)
  return {"root": str(root), "errors": errors, "num_examples": counts}


def robustness_phase(model, eval_data, preprocess_config, output_dir, kinds, *, baseline=None,
                     epsilons=DEFAULT_EPSILONS, batch_size=inference.BATCH_SIZE, seed=0,
                     table="auto", corrupted_data=None, class_names=None):
  """eval --robustness / --corrupted_data: runs `evaluate_robustness` on an eval split and/or
  `premade_corruption_errors` on a pre-made set; saves robustness.json and plots.

  Args:
    model: the evaluated model (EMA weights), logits from normalised images.
    eval_data: directory with manifest.json or glob of eval shards.
    preprocess_config: the model's eval preprocessing (size, mean/std).
    output_dir: gets robustness.json, robustness.png (kinds) and robustness_corrupted_data.png.
    kinds: some of KINDS.
    baseline: path of a robustness.json (or metrics.json) to normalise mCE/mFR by, e.g. the
      teacher's; its results are drawn beside this model's.
    epsilons: FGSM epsilons on the 0-255 scale.
    batch_size: images per batch.
    seed: seeds every corruption and perturbation.
    table: corruption severities, "cifar10-c", "imagenet-c" or "auto" (`table_for`).
    corrupted_data: root of a pre-made set in the ImageNet-C layout, or None; its errors (and,
      with a baseline holding the same section, CE and mCE) go under "corrupted_data"
      (`premade_corruption_errors`, converted into `<output_dir>/corrupted_data/`).
    class_names: label order for `corrupted_data` (None: sorted class folder names).
  """

  baseline_results = None
  if baseline:
    if not tf.io.gfile.exists(baseline):
      raise FileNotFoundError(f"--robustness_baseline {baseline!r} does not exist")
    with tf.io.gfile.GFile(baseline) as f:
      baseline_results = json.load(f)
    baseline_results = baseline_results.get("robustness", baseline_results)
  results = {}
  if kinds:
    pixels = pipeline.eval_dataset(eval_data, preprocess_config, batch_size=batch_size,
                                   normalized=False)
    results = evaluate_robustness(
        model, pixels, lambda images: preprocess.normalize(images, preprocess_config), kinds,
        baseline=baseline_results, seed=seed, epsilons=tuple(epsilons),
        table=table_for(preprocess_config.image_size, table))
  if corrupted_data:
    premade = premade_corruption_errors(
        model, corrupted_data, preprocess_config, os.path.join(output_dir, "corrupted_data"),
        class_names=class_names, batch_size=batch_size)
    base = _baseline_section(baseline_results, "corrupted_data")
    premade.update(mean_corruption_error(premade["errors"], base.get("errors") if base else None))
    results["corrupted_data"] = premade
  tf.io.gfile.makedirs(output_dir)
  records.write_text_atomically(os.path.join(output_dir, "robustness.json"),
                                json.dumps(results, indent=1) + "\n")
  if kinds:
    plots.robustness({k: v for k, v in results.items() if k in KINDS},
                    os.path.join(output_dir, "robustness.png"),
                    baseline_results=baseline_results, labels=("model", "baseline"))
  if corrupted_data:
    base = _baseline_section(baseline_results, "corrupted_data")
    plots.robustness({"corruptions": results["corrupted_data"]},
                    os.path.join(output_dir, "robustness_corrupted_data.png"),
                    baseline_results={"corruptions": base} if base else None,
                    labels=("model", "baseline"))
  return results
