"""The robustness phase (eval --robustness): load -> evaluation loops -> NumPy summaries -> save.

What the Noisy Student paper (Xie et al. 2020, section 4.4) reports besides accuracy, on two kinds
of sets:
- Made from a labeled eval split (--eval_data shards) on the fly (`data.corruptions`):
  "corruptions" (mCE), "perturbations" (flip rates) and "fgsm", so that a student can be compared
  with its teacher (`--robustness_baseline`). A pre-made corrupted set of one's own classes in
  ImageNet-C's layout (--corrupted_data without imagenet_c) is evaluated beside them.
- The published sets as released (`data.released_sets`), with a 1,000-class ImageNet model:
  "imagenet_a" (--eval_data is ImageNet-A's folders; top-1 over its 200 classes' logits),
  "imagenet_c" (--corrupted_data; CE and mCE divided by AlexNet's errors) and "imagenet_p"
  (--perturbed_data; flip rate and top-5 distance divided by AlexNet's), the papers' figures.

The evaluation loops here run the model through the shared inference step
(`noisy_student.inference`); every figure is computed from what they collect by
`noisy_student.robustness_metrics` (NumPy only). Progress goes to the log every 10 s.

Conventions of the generated sets' functions:
- `dataset` yields `(images, labels)` batches: uint8 `[B, H, W, 3]` already resized/cropped to the
  model's input size, and int class ids `[B]`.
- `normalize` maps float32 pixels in [0, 255] to what `model` takes; `model(x, training=False)`
  returns logits. Corruptions, perturbations and attacks all act on [0, 255] pixels, before it.
- Errors, accuracies and flip rates are fractions in [0, 1] (the papers print them as percent).
- Dict keys are strings so that results survive a JSON round trip unchanged (severity "3",
  epsilon "4").
"""

import json
import os
import time
import zlib

import numpy as np
import tensorflow as tf
from absl import logging

from data import corruptions as corruptions_lib
from data import pipeline
from data import preprocess
from data import records
from data import released_sets
from noisy_student import inference
from noisy_student import plots
from noisy_student import robustness_metrics as metrics
from noisy_student.phases import evaluate

GENERATED = ("corruptions", "perturbations", "fgsm")
RELEASED = ("imagenet_a", "imagenet_c", "imagenet_p")
KINDS = GENERATED + RELEASED
DEFAULT_EPSILONS = (1, 2, 4, 8)
IMAGENET_CLASSES = 1000
PROGRESS_SECONDS = 10.0

# Re-exported: the pure summaries live in robustness_metrics.
flip_rate = metrics.flip_rate
mean_corruption_error = metrics.mean_corruption_error
mean_flip_rate = metrics.mean_flip_rate


class _Progress:
  """A log line at most every PROGRESS_SECONDS: how far, how fast, how long is left."""

  def __init__(self, what, total=None, unit="images"):
    self.what, self.total, self.unit = what, total, unit
    self.done = 0
    self.start = self.last = time.monotonic()

  def add(self, count, where=""):
    self.done += int(count)
    now = time.monotonic()
    if now - self.last >= PROGRESS_SECONDS:
      self.last = now
      self._log(where)

  def _log(self, where, final=False):
    rate = self.done / max(time.monotonic() - self.start, 1e-9)
    of = f"/{self.total}" if self.total else ""
    left = ""
    if self.total and rate > 0 and not final:
      left = f", {_duration((self.total - self.done) / rate)} left"
    at = f" ({where})" if where else ""
    logging.info("robustness %s: %d%s %s%s, %.1f %s/s%s%s", self.what, self.done, of, self.unit,
                 at, rate, self.unit, left, " (done)" if final else "")

  def finish(self):
    self._log("", final=True)


def _duration(seconds):
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


class _Logits:
  """Logits (float32 NumPy) of uint8 images through the one inference step (`inference.
  InferenceStep`, built at the first batch's size unless given one), any number of images."""

  def __init__(self, model, normalize, batch_size=None, *, strategy=None, jit_compile=False):
    self.model, self.normalize = model, normalize
    self.strategy, self.jit_compile = strategy, jit_compile
    self.step = None if batch_size is None else self._build(batch_size)

  def _build(self, size):
    return inference.InferenceStep(self.model, size, strategy=self.strategy,
                                   jit_compile=self.jit_compile)

  def __call__(self, images):
    images = tf.convert_to_tensor(images)
    if self.step is None:  # the first batch of a batched dataset is its largest
      self.step = self._build(int(images.shape[0]))
    size = self.step.batch_size
    return np.concatenate([
        self.step(self.normalize(tf.cast(images[start:start + size], tf.float32)))
        for start in range(0, max(int(images.shape[0]), 1), size)])


def _predictor(model, normalize):
  """Top-1 classes of uint8 images: the shared inference step after `normalize`."""
  logits = _Logits(model, normalize)
  return lambda images: tf.constant(np.argmax(logits(images), axis=-1).astype(np.int32))


def _labels(labels):
  return tf.cast(tf.reshape(labels, [-1]), tf.int32)


def _error_rate(predict, dataset, progress=None, where=""):
  wrong, total = 0, 0
  for images, labels in dataset:
    wrong += int(tf.reduce_sum(tf.cast(predict(images) != _labels(labels), tf.int32)))
    count = int(tf.shape(labels)[0])
    total += count
    if progress is not None:
      progress.add(count, where)
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


# ---- Generated from an eval split ------------------------------------------------------------

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
  progress = _Progress("corruptions", unit="passes")
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
      progress.add(1, f"{name} {severity}")
  progress.finish()
  return {"table": table, "seed": int(seed), "severities": [int(s) for s in severities],
          "clean_error": clean_error, "num_examples": num_examples, "errors": errors}


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
  progress = _Progress("perturbations", unit="sequences")
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
      progress.add(frames.shape[0], name)
    predictions = np.concatenate(predictions)
    num_examples = len(predictions)
    rates[name] = metrics.flip_rate(predictions, spec.compare_to)
  progress.finish()
  return {"seed": int(seed), "num_examples": num_examples, "num_frames": frames_used,
          "compare_to": compare, "flip_rates": rates,
          "mean_flip_rate": float(np.mean(list(rates.values())))}


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

  Its own loop, not the inference step: the attack needs the input gradient.

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

  progress = _Progress("fgsm")
  correct, total = np.zeros(len(epsilons) + 1, np.int64), 0
  for images, labels in dataset:
    correct += correct_counts(images, _labels(labels)).numpy()
    count = int(tf.shape(labels)[0])
    total += count
    progress.add(count)
  if total == 0:
    raise ValueError("the evaluation dataset is empty")
  progress.finish()
  return {"epsilon_scale": "pixels in [0, 255]", "num_examples": total,
          "clean_accuracy": float(correct[0] / total),
          "accuracy": {_epsilon_key(e): float(c / total) for e, c in zip(epsilons, correct[1:])}}


def _baseline_section(baseline, kind):
  if baseline is None:
    return None
  baseline = baseline.get("robustness", baseline)  # a whole metrics.json is fine too
  return baseline.get(kind)


def parse_kinds(kinds):
  """A sequence of kinds, or one comma-separated string as the --robustness flag gives."""
  kinds = [k.strip() for k in kinds.split(",") if k.strip()] if isinstance(kinds, str) else kinds
  _check_names(kinds, KINDS, "robustness kind")
  return list(kinds)


def evaluate_robustness(model, dataset, normalize, kinds, *, baseline=None, seed=0,
                        corruptions=tuple(corruptions_lib.CORRUPTIONS),
                        severities=corruptions_lib.SEVERITIES, table=corruptions_lib.DEFAULT_TABLE,
                        perturbations=tuple(corruptions_lib.PERTURBATIONS), num_frames=None,
                        epsilons=DEFAULT_EPSILONS):
  """Runs the requested generated-set evaluations and returns one JSON-able dict.

  Args:
    kinds: some of GENERATED (a sequence, or one comma-separated string).
    baseline: an earlier result of this function (e.g. the teacher's), or a metrics.json holding it
      under "robustness"; when it has the section, corruptions gain CE/mCE and perturbations the
      relative flip rates and mFR.

  Returns:
    {"corruptions": corruption_errors(...) | mean_corruption_error(...),
     "perturbations": flip_rates(...) | mean_flip_rate(...),
     "fgsm": fgsm_accuracy(...)}, with only the requested kinds.
  """
  kinds = parse_kinds(kinds)
  _check_names(kinds, GENERATED, "robustness kind for an eval split")
  results = {}
  if "corruptions" in kinds:
    result = corruption_errors(model, dataset, normalize, corruptions=corruptions,
                               severities=severities, seed=seed, table=table)
    base = _baseline_section(baseline, "corruptions")
    result.update(metrics.mean_corruption_error(result["errors"],
                                                base.get("errors") if base else None))
    results["corruptions"] = result
  if "perturbations" in kinds:
    result = flip_rates(model, dataset, normalize, perturbations=perturbations,
                        num_frames=num_frames, seed=seed)
    base = _baseline_section(baseline, "perturbations")
    result.update(metrics.mean_flip_rate(result["flip_rates"],
                                         base.get("flip_rates") if base else None))
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


# ---- Released sets -----------------------------------------------------------------------------

def check_inputs(kinds, *, eval_data=None, corrupted_data=None, perturbed_data=None):
  """Before any work: each kind has the input it reads, and they do not contradict each other.

  imagenet_a reads --eval_data as ImageNet-A's folders, so it cannot share it with the kinds
  generated from a converted eval split; imagenet_c reads --corrupted_data, imagenet_p
  --perturbed_data.
  """
  kinds = parse_kinds(kinds)
  generated = [k for k in kinds if k in GENERATED]
  needs = {"imagenet_a": ("--eval_data", eval_data), "imagenet_c": ("--corrupted_data",
                                                                   corrupted_data),
           "imagenet_p": ("--perturbed_data", perturbed_data)}
  for kind, (flag, value) in needs.items():
    if kind in kinds and not value:
      raise ValueError(f"--robustness={kind} needs {flag} (the released set's root folder)")
    if kind in kinds and not tf.io.gfile.isdir(value):
      raise ValueError(f"{flag} {value!r}: not a directory (--robustness={kind} reads the "
                       "released set's root folder)")
  if "imagenet_a" in kinds and generated:
    raise ValueError(f"--robustness=imagenet_a reads --eval_data as ImageNet-A's folders; "
                     f"{','.join(generated)} need a converted eval split there: run them in a "
                     "command of their own")
  if perturbed_data and "imagenet_p" not in kinds:
    raise ValueError("--perturbed_data is read by --robustness=imagenet_p only")
  if (generated or (corrupted_data and "imagenet_c" not in kinds)) and not eval_data:
    raise ValueError("--robustness=corruptions, perturbations, fgsm and a --corrupted_data set "
                     "of one's own classes need --eval_data (a converted eval split)")
  return kinds


def clean_eval_data(kinds, eval_data):
  """The converted eval split that eval scores as usual, or None: with imagenet_a, --eval_data
  is ImageNet-A's folders."""
  return None if "imagenet_a" in parse_kinds(kinds) else eval_data


def needs_eval_data(kinds):
  """Whether --eval_data must be given: not when only imagenet_c and imagenet_p are asked for."""
  kinds = parse_kinds(kinds)
  return not (kinds and all(k in ("imagenet_c", "imagenet_p") for k in kinds))


def _check_imagenet_model(num_classes, kinds):
  released = [k for k in kinds if k in RELEASED]
  if released and num_classes != IMAGENET_CLASSES:
    raise ValueError(f"--robustness={','.join(released)} needs a {IMAGENET_CLASSES}-class "
                     f"ImageNet model (classes in sorted WordNet-id order); the model has "
                     f"{num_classes}")


def imagenet_a_results(logits, items, prep, *, batch_size):
  """ImageNet-A: metrics over the 200 classes' logits of a 1,000-class model.

  Returns:
    (summary for robustness.json: top1, top5, loss, ece, num_examples, num_skipped; the full
    `evaluate.classification_metrics` over the 200 classes).
  """
  progress = _Progress("imagenet_a", len(items))
  collected, labels = [], []
  for images, batch_labels in released_sets.image_dataset(items, prep, batch_size=batch_size):
    collected.append(metrics.subset_logits(logits(images), released_sets.imagenet_a_indices()))
    labels.append(batch_labels.numpy())
    progress.add(len(labels[-1]))
  if not collected:
    raise ValueError("no ImageNet-A image could be read")
  progress.finish()
  full = evaluate.classification_metrics(np.concatenate(collected), np.concatenate(labels))
  summary = {key: full[key] for key in ("top1", "top5", "loss", "ece", "num_examples")}
  summary["num_skipped"] = len(items) - full["num_examples"]
  return summary, full


def _folder_errors(logits, folders, class_names, prep, *, batch_size, what):
  """Top-1 errors and image counts per (corruption, severity) folder of class folders."""
  listed = {f: released_sets.labeled_files(f.path, class_names, what=what) for f in folders}
  progress = _Progress(what, sum(len(items) for items in listed.values()))
  predict = lambda images: tf.constant(np.argmax(logits(images), axis=-1).astype(np.int32))
  errors, counts = {}, {}
  for folder, items in listed.items():
    dataset = released_sets.image_dataset(items, released_sets.uncropped(prep),
                                          batch_size=batch_size)
    error, total = _error_rate(predict, dataset, progress,
                               f"{folder.corruption} {folder.severity}")
    errors.setdefault(folder.corruption, {})[str(folder.severity)] = float(error)
    counts.setdefault(folder.corruption, {})[str(folder.severity)] = int(total)
  progress.finish()
  return errors, counts


def imagenet_c_results(logits, folders, prep, *, batch_size, clean_error=None):
  """ImageNet-C: top-1 error per corruption and severity (images uncropped: they are already
  224x224 centre crops, resized only when the model's size differs), CE and mCE divided by
  AlexNet's errors (`robustness_metrics.imagenet_c_summary`)."""
  errors, counts = _folder_errors(logits, folders, released_sets.imagenet_wnids(), prep,
                                  batch_size=batch_size, what="imagenet_c")
  return {"errors": errors, "num_examples": counts,
          **metrics.imagenet_c_summary(errors, clean_error)}


def _sequence_logits(logits, dataset, batch_size):
  """Yields each sequence's logits `[T, C]`, running the step on as many whole sequences as fit
  in one batch (a 31-frame sequence alone would fill an 8th of a 256 batch)."""
  pending = []

  def flush():
    out = logits(np.concatenate(pending))
    bounds = np.cumsum([0] + [len(frames) for frames in pending])
    pending.clear()
    return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

  for frames, _ in dataset:
    frames = frames.numpy()
    if pending and sum(map(len, pending)) + len(frames) > batch_size:
      yield from flush()
    pending.append(frames)
  if pending:
    yield from flush()


def imagenet_p_results(logits, sequences, prep, *, batch_size):
  """ImageNet-P: per perturbation the flip probability and the top-5 distance (each sequence's
  mean over its frame pairs, then the mean over sequences, as ImageNet-P/test.py), and their
  AlexNet-normalised forms, mFR and mT5D (`robustness_metrics.imagenet_p_summary`)."""
  progress = _Progress("imagenet_p", sum(len(items) for items in sequences.values()),
                       unit="sequences")
  flip, distance, counts, skipped = {}, {}, {}, []
  for name, items in sequences.items():
    noise = name in metrics.IMAGENET_P_NOISE
    stability = []
    dataset = released_sets.sequence_dataset(items, prep, skipped)
    for sequence in _sequence_logits(logits, dataset, batch_size):
      stability.append(metrics.sequence_stability(sequence, noise))
      progress.add(1, name)
    if not stability:
      raise ValueError(f"no {name} sequence of ImageNet-P could be read")
    flip[name], distance[name] = (float(v) for v in np.mean(stability, axis=0))
    counts[name] = len(stability)
  progress.finish()
  return {"flip_probability": flip, "unnormalised_top5_distance": distance,
          "num_sequences": counts, "skipped": skipped, **metrics.imagenet_p_summary(flip, distance)}


def premade_corruption_errors(logits, root, prep, num_classes, *, class_names=None,
                              batch_size=inference.BATCH_SIZE):
  """Top-1 errors on a pre-made corrupted set of one's own classes in ImageNet-C's layout
  (`<root>/<corruption>/<severity>/<class>/<images>`), evaluated uncropped like ImageNet-C.

  Args:
    class_names: label order (e.g. the clean eval set's manifest class names); None takes the
      class folders in sorted name order. Either way the count must be the model's.

  Returns:
    {"root", "errors": {c: {"s": error}}, "num_examples": {c: {"s": n}}} (the "errors" take
    `robustness_metrics.mean_corruption_error`).
  """
  folders = released_sets.list_corrupted_folders(root)  # each holds the same class folders
  names = list(class_names) if class_names else released_sets.class_folders(folders[0].path)
  if len(names) != num_classes:
    raise ValueError(f"{folders[0].path} has {len(names)} classes but the model {num_classes}")
  errors, counts = _folder_errors(logits, folders, names, prep, batch_size=batch_size,
                                  what="corrupted_data")
  return {"root": str(root), "errors": errors, "num_examples": counts}


def _load_baseline(path):
  if not path:
    return None
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"--robustness_baseline {path!r} does not exist")
  with tf.io.gfile.GFile(path) as f:
    loaded = json.load(f)
  return loaded.get("robustness", loaded)


def _vs_baseline(results, baseline):
  """Released sets against a baseline's same section (e.g. the teacher's): CE and mCE, relative
  flip rates and mFR with the baseline in AlexNet's place."""
  base = _baseline_section(baseline, "imagenet_c")
  if "imagenet_c" in results and base:
    results["imagenet_c"]["vs_baseline"] = metrics.mean_corruption_error(
        results["imagenet_c"]["errors"], base["errors"])
  base = _baseline_section(baseline, "imagenet_p")
  if "imagenet_p" in results and base:
    results["imagenet_p"]["vs_baseline"] = metrics.mean_flip_rate(
        results["imagenet_p"]["flip_probability"], base["flip_probability"])


def _plot_released(results, baseline, path):
  """ImageNet-C's errors by severity and ImageNet-P's flip probabilities in one PNG."""
  def plotted(section):
    if not section:
      return None
    if "errors" in section:
      shown = {"errors": section["errors"],
               "mean_error": float(np.mean([e for by in section["errors"].values()
                                            for e in by.values()]))}
      figure = section.get("mce")
    else:
      shown = {"flip_rates": section["flip_probability"],
               "mean_flip_rate": float(np.mean(list(section["flip_probability"].values())))}
      figure = section.get("mfr")
    if figure is not None:  # the plot's title names it mCE / mFR
      shown["mce" if "errors" in shown else "mfr"] = figure
    return shown

  mine = {"corruptions": plotted(results.get("imagenet_c")),
          "perturbations": plotted(results.get("imagenet_p"))}
  theirs = {"corruptions": plotted(_baseline_section(baseline, "imagenet_c")),
            "perturbations": plotted(_baseline_section(baseline, "imagenet_p"))}
  has_baseline = any(theirs.values())
  plots.robustness(mine, path, baseline_results=theirs if has_baseline else None,
                   labels=("model", "baseline"))


def robustness_phase(model, eval_data, preprocess_config, output_dir, kinds, *, baseline=None,
                     epsilons=DEFAULT_EPSILONS, batch_size=inference.BATCH_SIZE, seed=0,
                     table="auto", corrupted_data=None, perturbed_data=None, class_names=None,
                     clean_error=None, strategy=None, jit_compile=False):
  """eval --robustness / --corrupted_data / --perturbed_data: every requested evaluation, saved
  as robustness.json (and plots) in `output_dir`.

  Args:
    model: the evaluated model (EMA weights), logits from normalised images.
    eval_data: a converted eval split (directory with manifest.json or glob of shards) for the
      generated kinds, or ImageNet-A's root folder for imagenet_a.
    preprocess_config: the model's eval preprocessing (size, mean/std).
    output_dir: gets robustness.json, robustness.png (generated kinds),
      robustness_imagenet.png (imagenet_c, imagenet_p), robustness_corrupted_data.png and
      imagenet_a/ (metrics.json over the 200 classes and its plots).
    kinds: some of KINDS.
    baseline: path of a robustness.json (or metrics.json) to normalise by, e.g. the teacher's:
      the generated kinds' mCE/mFR, the released sets' `vs_baseline`; drawn beside this model's.
    epsilons: FGSM epsilons on the 0-255 scale.
    batch_size: images per inference batch.
    seed: seeds every generated corruption and perturbation.
    table: corruption severities, "cifar10-c", "imagenet-c" or "auto" (`table_for`).
    corrupted_data: ImageNet-C's root with imagenet_c; else a pre-made set of the eval split's
      classes in its layout (errors and, with a baseline holding the same section, CE and mCE
      under "corrupted_data").
    perturbed_data: ImageNet-P's root (imagenet_p).
    class_names: label order for a pre-made `corrupted_data` (None: sorted class folder names).
    clean_error: the model's clean ImageNet top-1 error, for ImageNet-C's relative mCE.
    strategy, jit_compile: how the inference step runs (`inference.InferenceStep`).
  """
  kinds = check_inputs(kinds, eval_data=eval_data, corrupted_data=corrupted_data,
                       perturbed_data=perturbed_data)
  baseline_results = _load_baseline(baseline)
  num_classes = int(model.output.shape[-1])
  _check_imagenet_model(num_classes, kinds)
  # Every listing first: a set that breaks its layout fails before hours of another set's work.
  a_items = released_sets.list_imagenet_a(eval_data) if "imagenet_a" in kinds else None
  c_folders = released_sets.list_imagenet_c(corrupted_data) if "imagenet_c" in kinds else None
  p_sequences = (released_sets.list_imagenet_p(perturbed_data) if "imagenet_p" in kinds
                 else None)
  premade = corrupted_data if corrupted_data and "imagenet_c" not in kinds else None

  normalize = lambda images: preprocess.normalize(images, preprocess_config)
  logits = _Logits(model, normalize, batch_size, strategy=strategy, jit_compile=jit_compile)
  results, imagenet_a_metrics = {}, None
  generated = [k for k in kinds if k in GENERATED]
  if generated:
    pixels = pipeline.eval_dataset(eval_data, preprocess_config, batch_size=batch_size,
                                   normalized=False)
    results = evaluate_robustness(
        model, pixels, normalize, generated, baseline=baseline_results, seed=seed,
        epsilons=tuple(epsilons), table=table_for(preprocess_config.image_size, table))
  if a_items is not None:
    results["imagenet_a"], imagenet_a_metrics = imagenet_a_results(
        logits, a_items, preprocess_config, batch_size=batch_size)
    results["imagenet_a"]["root"] = str(eval_data)
  if c_folders is not None:
    results["imagenet_c"] = {"root": str(corrupted_data), **imagenet_c_results(
        logits, c_folders, preprocess_config, batch_size=batch_size, clean_error=clean_error)}
  if p_sequences is not None:
    results["imagenet_p"] = {"root": str(perturbed_data), **imagenet_p_results(
        logits, p_sequences, preprocess_config, batch_size=batch_size)}
  _vs_baseline(results, baseline_results)
  if premade:
    section = premade_corruption_errors(logits, premade, preprocess_config, num_classes,
                                        class_names=class_names, batch_size=batch_size)
    base = _baseline_section(baseline_results, "corrupted_data")
    section.update(metrics.mean_corruption_error(section["errors"],
                                                 base.get("errors") if base else None))
    results["corrupted_data"] = section
  _save(results, output_dir, baseline_results, imagenet_a_metrics)
  return results


def _save(results, output_dir, baseline_results, imagenet_a_metrics):
  tf.io.gfile.makedirs(output_dir)
  records.write_text_atomically(os.path.join(output_dir, "robustness.json"),
                                json.dumps(results, indent=1) + "\n")
  if any(k in results for k in GENERATED):
    plots.robustness({k: v for k, v in results.items() if k in GENERATED},
                     os.path.join(output_dir, "robustness.png"),
                     baseline_results=baseline_results, labels=("model", "baseline"))
  if "imagenet_c" in results or "imagenet_p" in results:
    _plot_released(results, baseline_results,
                   os.path.join(output_dir, "robustness_imagenet.png"))
  if imagenet_a_metrics is not None:
    evaluate.save_metrics(imagenet_a_metrics, os.path.join(output_dir, "imagenet_a"),
                          class_names=list(released_sets.imagenet_a_wnids()))
  if "corrupted_data" in results:
    base = _baseline_section(baseline_results, "corrupted_data")
    plots.robustness({"corruptions": results["corrupted_data"]},
                     os.path.join(output_dir, "robustness_corrupted_data.png"),
                     baseline_results={"corruptions": base} if base else None,
                     labels=("model", "baseline"))


headline = metrics.headline
