"""PNG report plots written next to the phases' JSON (matplotlib, Agg backend, atomic writes)."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from data import corruptions as corruptions_lib  # noqa: E402
from data import records  # noqa: E402


def _save(figure, path):
  """PNG bytes in memory, then temporary file + rename: works for gs:// and never leaves a
  half-written plot under the final name."""
  buffer = io.BytesIO()
  figure.tight_layout()
  figure.savefig(buffer, format="png", dpi=110)
  plt.close(figure)
  records.write_bytes_atomically(path, buffer.getvalue())
  return path


def _tick_style(labels):
  # Slanted when words or many classes would overlap along the axis.
  slanted = len(labels) > 10 or max(map(len, labels), default=0) > 3
  return {"rotation": 45, "ha": "right"} if slanted else {}


# Above this many classes a plot of one bar or panel per class is drawn another way (pooled, or
# classes ranked by their value): 1,000 ImageNet panels take minutes to draw and a bar chart of
# 1,000 classes is a PNG 50,000 pixels wide, at the end of a phase that ran for hours.
MAX_CLASSES_APART = 50


def confidence_histograms(histogram, path, *, threshold=None, class_names=None):
  """Per class: how confident the teacher was on the images it assigned to that class; with
  more than MAX_CLASSES_APART classes, one histogram of all classes pooled.

  Args:
    histogram: counts [C, bins] over equal confidence bins of [0, 1].
  """
  histogram = np.asarray(histogram)
  num_classes, bins = histogram.shape
  edges = np.linspace(0, 1, bins + 1)
  if num_classes > MAX_CLASSES_APART:
    figure, ax = plt.subplots(figsize=(5, 3))
    ax.bar(edges[:-1], histogram.sum(axis=0), width=1 / bins, align="edge", color="tab:blue")
    if threshold:
      ax.axvline(threshold, color="tab:red", linewidth=1)
    ax.set_xlabel("teacher confidence")
    ax.set_ylabel("images")
    ax.set_title(f"teacher confidence, all {num_classes} predicted classes pooled "
                 "(red: threshold)", fontsize=9)
    return _save(figure, path)
  columns = min(5, num_classes)
  rows = int(np.ceil(num_classes / columns))
  figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.0 * rows), squeeze=False,
                              sharex=True)
  for c, ax in enumerate(axes.flat):
    if c >= num_classes:
      ax.axis("off")
      continue
    ax.bar(edges[:-1], histogram[c], width=1 / bins, align="edge", color="tab:blue")
    if threshold:
      ax.axvline(threshold, color="tab:red", linewidth=1)
    ax.set_title(class_names[c] if class_names else f"class {c}", fontsize=8)
    ax.tick_params(labelsize=6)
  figure.suptitle("teacher confidence per predicted class (red: threshold)", fontsize=9)
  return _save(figure, path)


def _ranked(ax, values_by_label, ylabel):
  """Each series sorted descending against the class's rank: many classes on one small axis."""
  for label, values in values_by_label:
    ax.plot(np.arange(1, len(values) + 1), np.sort(np.asarray(values))[::-1], label=label)
  ax.set_xlabel("class rank (each series sorted on its own)")
  ax.set_ylabel(ylabel)


def class_counts(before, after, path, *, labels=("after threshold", "kept (with copies)"),
                 class_names=None):
  """Grouped bars: images per class before and after balancing; with more than
  MAX_CLASSES_APART classes, each count's classes ranked instead."""
  before, after = np.asarray(before), np.asarray(after)
  if len(before) > MAX_CLASSES_APART:
    figure, ax = plt.subplots(figsize=(5, 3))
    _ranked(ax, [(labels[0], before), (labels[1], after)], "images")
    ax.legend(fontsize=8)
    ax.set_title(f"pseudo-labeled images per class, {len(before)} classes ranked", fontsize=9)
    return _save(figure, path)
  x = np.arange(len(before))
  figure, ax = plt.subplots(figsize=(max(4, 0.5 * len(x) + 2), 3))
  ax.bar(x - 0.2, before, 0.4, label=labels[0])
  ax.bar(x + 0.2, after, 0.4, label=labels[1])
  ticks = class_names if class_names is not None else [str(i) for i in x]
  ax.set_xticks(x, ticks, fontsize=7, **_tick_style(ticks))
  ax.set_ylabel("images")
  ax.legend(fontsize=8)
  ax.set_title("pseudo-labeled images per class", fontsize=9)
  return _save(figure, path)


def per_class_accuracy(accuracy_by_class, path, *, title="per-class top-1"):
  """Bars of top-1 per class; `accuracy_by_class` is keyed by what the axis shows, the class
  name (or its index as a string, for classes without names). With more than
  MAX_CLASSES_APART classes, the classes ranked by their top-1."""
  keys = list(accuracy_by_class)
  values = [accuracy_by_class[k] for k in keys]
  if len(keys) > MAX_CLASSES_APART:
    figure, ax = plt.subplots(figsize=(5, 3))
    _ranked(ax, [("top-1", values)], "top-1")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}, {len(keys)} classes ranked", fontsize=9)
    return _save(figure, path)
  ticks = [str(k) for k in keys]
  figure, ax = plt.subplots(figsize=(max(4, 0.45 * len(keys) + 2), 3))
  ax.bar(range(len(keys)), values, color="tab:green")
  ax.set_xticks(range(len(keys)), ticks, fontsize=7, **_tick_style(ticks))
  ax.set_ylim(0, 1)
  ax.set_title(title, fontsize=9)
  return _save(figure, path)


# Above this many classes a confusion matrix is drawn without its counts, and above
# MAX_NAMED_CLASSES without class names: they would no longer be legible.
MAX_ANNOTATED_CLASSES = 20
MAX_NAMED_CLASSES = MAX_CLASSES_APART


def confusion_matrix(matrix, path, *, class_names=None):
  """Counts of (true class, predicted class): rows true, columns predicted, colour per row
  share (so rare classes show their errors as clearly as common ones), count written in each
  cell for up to MAX_ANNOTATED_CLASSES classes."""
  matrix = np.asarray(matrix, np.int64)
  num_classes = len(matrix)
  totals = matrix.sum(axis=1, keepdims=True)
  shares = matrix / np.maximum(totals, 1)
  size = min(12, max(4, 0.45 * num_classes + 2))
  figure, ax = plt.subplots(figsize=(size, size * 0.9))
  image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
  if num_classes <= MAX_ANNOTATED_CLASSES:
    for (row, column), count in np.ndenumerate(matrix):
      if count:
        ax.text(column, row, str(count), ha="center", va="center", fontsize=6,
                color="white" if shares[row, column] > 0.5 else "black")
  if num_classes <= MAX_NAMED_CLASSES:
    ticks = list(class_names) if class_names else [str(c) for c in range(num_classes)]
    ax.set_xticks(range(num_classes), ticks, fontsize=7, **_tick_style(ticks))
    ax.set_yticks(range(num_classes), ticks, fontsize=7)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(f"confusion matrix ({int(matrix.sum())} images, counts)", fontsize=9)
  return _save(figure, path)


def reliability_diagram(calibration, ece, path, *, threshold=None):
  """Accuracy against confidence per confidence bin (evaluate.calibration's), the diagonal of a
  calibrated model, and the images per bin below; the filter's threshold in red."""
  edges = np.asarray(calibration["bin_edges"])
  widths, lefts = np.diff(edges), edges[:-1]
  nan = lambda values: np.array([np.nan if v is None else v for v in values], np.float64)
  accuracy, confidence = nan(calibration["accuracy"]), nan(calibration["confidence"])
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
  top.bar(lefts, accuracy, widths, align="edge", color="tab:blue", edgecolor="white",
          label="accuracy")
  top.scatter(lefts + widths / 2, confidence, color="tab:orange", marker="_", s=150, zorder=3,
              label="mean confidence")
  top.plot([0, 1], [0, 1], color="tab:gray", linestyle="--", linewidth=1, label="calibrated")
  bottom.bar(lefts, calibration["count"], widths, align="edge", color="tab:gray",
             edgecolor="white")
  if threshold:
    top.axvline(threshold, color="tab:red", linewidth=1, label=f"filter threshold {threshold:g}")
    bottom.axvline(threshold, color="tab:red", linewidth=1)
  top.set_xlim(0, 1)
  top.set_ylim(0, 1)
  top.set_ylabel("accuracy")
  # Upper left: above the diagonal at low confidence, where a model rarely has bars.
  top.legend(fontsize=7, loc="upper left")
  top.set_title(f"reliability (ECE {ece:.4f}, {len(lefts)} bins)", fontsize=9)
  bottom.set_xlabel("confidence (top softmax probability)")
  bottom.set_ylabel("images", fontsize=8)
  bottom.tick_params(labelsize=7)
  return _save(figure, path)


def training_curves(history, path, *, evaluations=None, first_epoch=0):
  """Loss parts and labeled accuracy against data epochs (passes over the labeled data: each
  history row's "data_epoch", its steps done over the steps of an epoch), from a train run's
  history.json, and the periodic evaluation's top-1 (its "periodic_eval", at its own
  "data_epochs") beside the accuracy. A history without "data_epoch" (an older run) is drawn by
  Keras epoch, counted from `first_epoch` + 1."""
  figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
  rows = len(next(iter(history.values()), []))
  x = history.get("data_epoch") or list(range(first_epoch + 1, first_epoch + 1 + rows))
  unit = "data epoch" if "data_epoch" in history else "Keras epoch"
  for name in ("loss", "labeled_loss", "unlabeled_loss"):
    if name in history and any(history[name]):
      left.plot(x, history[name], label=name)
  left.set_xlabel(unit)
  left.legend(fontsize=7)
  if "accuracy" in history:
    right.plot(x, history["accuracy"], label="labeled accuracy (training images, as augmented)")
  if evaluations and evaluations["points"]:
    points = evaluations["points"]
    right.plot([p["data_epochs"] if unit == "data epoch" else p["keras_epoch"] for p in points],
               [p["top1"] for p in points], marker="o", markersize=3,
               label=f"{evaluations['split']} top-1 (the model as it would be saved)")
  if "learning_rate" in history:
    lr = right.twinx()
    lr.plot(x, history["learning_rate"], color="tab:gray", linestyle=":", label="learning rate")
    lr.set_ylabel("learning rate (dotted)", fontsize=7)
    lr.tick_params(labelsize=6)
  right.set_xlabel(unit)
  right.legend(fontsize=7, loc="lower right")
  return _save(figure, path)


def accuracy_per_round(rounds, path):
  """Top-1 per iterate round (teacher, student 1, ...)."""
  figure, ax = plt.subplots(figsize=(4.5, 3))
  x = [r["round"] for r in rounds]
  ax.plot(x, [r["top1"] for r in rounds], marker="o")
  for r in rounds:
    ax.annotate(f"{100 * r['top1']:.2f}%\n{r['model'].replace('efficientnet-', '')}",
                (r["round"], r["top1"]), xytext=(0, 5), textcoords="offset points", fontsize=7,
                ha="center", va="bottom")
  ax.set_xticks(x, ["teacher" if r["round"] == 0 else f"student {r['round']}" for r in rounds])
  ax.margins(x=0.15, y=0.3)  # room for the labels above the points
  ax.set_ylabel("test top-1")
  ax.set_title("accuracy per Noisy Student round", fontsize=9)
  return _save(figure, path)


def _plot_corruptions(axes, runs):
  corruptions = runs[0][1]["errors"]
  for ax, name in zip(axes, corruptions):
    for label, result in runs:
      by_severity = result["errors"].get(name, {})
      severities = sorted(by_severity, key=int)
      line, = ax.plot([int(s) for s in severities], [100 * by_severity[s] for s in severities],
                      marker="o", label=label)
      if "clean_error" in result:  # a pre-made set has none of its own
        ax.axhline(100 * result["clean_error"], color=line.get_color(), linestyle=":",
                   linewidth=1)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("severity")
    ax.set_ylabel("top-1 error (%)")
    ax.set_xticks(list(corruptions_lib.SEVERITIES))


def _plot_bars(ax, runs, key, title, ylabel):
  names = list(runs[0][1][key])
  width = 0.8 / len(runs)
  for i, (label, result) in enumerate(runs):
    values = [100 * result[key].get(n, np.nan) for n in names]
    ax.bar(np.arange(len(names)) + i * width, values, width, label=label)
  ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, fontsize=8)
  ax.set_title(title, fontsize=9)
  ax.set_ylabel(ylabel)


def _plot_fgsm(ax, runs):
  for label, result in runs:
    epsilons = sorted(result["accuracy"], key=float)
    ax.plot([0] + [float(e) for e in epsilons],
            [100 * result["clean_accuracy"]] + [100 * result["accuracy"][e] for e in epsilons],
            marker="o", label=label)
  ax.set_title("FGSM", fontsize=9)
  ax.set_xlabel("epsilon (pixels of 255)")
  ax.set_ylabel("top-1 accuracy (%)")


def _robustness_summary(results):
  parts = []
  if results.get("corruptions"):
    parts.append(f"mean corruption error {100 * results['corruptions']['mean_error']:.1f}%")
    if "mce" in results["corruptions"]:
      parts.append(f"mCE {100 * results['corruptions']['mce']:.1f}%")
  if results.get("perturbations"):
    parts.append(f"mean flip rate {100 * results['perturbations']['mean_flip_rate']:.2f}%")
    if "mfr" in results["perturbations"]:
      parts.append(f"mFR {100 * results['perturbations']['mfr']:.1f}%")
  return ", ".join(parts)


def robustness(results, path, baseline_results=None, *, labels=("model", "baseline")):
  """Writes a PNG of `evaluate_robustness` results: error by corruption and severity (one panel
  per corruption; dotted: clean error), flip rate per perturbation and FGSM accuracy by epsilon,
  with the baseline's (e.g. teacher's) beside the model's when given. Written to a temporary name,
  then renamed.
  """
  def runs(kind):
    pairs = [(labels[0], results[kind])]
    # A whole metrics.json is fine too: its robustness results are under "robustness".
    baseline = (baseline_results.get("robustness", baseline_results).get(kind)
                if baseline_results is not None else None)
    if baseline:
      pairs.append((labels[1], baseline))
    return pairs

  kinds = [kind for kind in ("corruptions", "perturbations", "fgsm") if results.get(kind)]
  if not kinds:
    raise ValueError("no robustness results to plot")
  corruption_names = list(results["corruptions"]["errors"]) if "corruptions" in kinds else []
  panels = len(corruption_names) + len(kinds) - ("corruptions" in kinds)
  columns = min(4, panels)
  rows = -(-panels // columns)
  figure = plt.figure(figsize=(3.2 * columns, 2.6 * rows + 0.4))
  axes = list(figure.subplots(rows, columns, squeeze=False).flat)
  if corruption_names:
    _plot_corruptions(axes[:len(corruption_names)], runs("corruptions"))
  position = len(corruption_names)
  if "perturbations" in kinds:
    _plot_bars(axes[position], runs("perturbations"), "flip_rates", "flip rate", "flip rate (%)")
    position += 1
  if "fgsm" in kinds:
    _plot_fgsm(axes[position], runs("fgsm"))
    position += 1
  for ax in axes[position:]:
    ax.set_visible(False)
  if baseline_results is not None:
    axes[0].legend(fontsize=8)
  figure.suptitle(f"{labels[0]}: {_robustness_summary(results)}", fontsize=10)
  return _save(figure, path)


def pseudo_label_samples(rows, path, *, threshold=None, class_names=None):
  """A grid of pseudo-labeled images, one row per class, each with its confidence.

  Args:
    rows: [(class index, [(image, confidence), ...])], images as uint8 [H, W, 3] arrays (None:
      not decodable), in the order to draw them (filter_phase.report_samples: the most confident
      kept images, then the least confident).
  """
  columns = max([len(images) for _, images in rows] + [1])
  figure, axes = plt.subplots(len(rows), columns, figsize=(0.8 * columns + 1, 0.95 * len(rows)),
                              squeeze=False)
  for (label, images), row in zip(rows, axes):
    for ax in row:
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
    for ax, (image, confidence) in zip(row, images):
      if image is None:
        ax.text(0.5, 0.5, "not\ndecodable", ha="center", va="center", fontsize=5)
      else:
        ax.imshow(image, interpolation="nearest")
      ax.set_xlabel(f"{confidence:.2f}", fontsize=6, labelpad=1)
    name = class_names[label] if class_names else f"class {label}"
    row[0].set_ylabel(name if images else f"{name}\n(none kept)", fontsize=7, rotation=0,
                      ha="right", va="center")
  kept = f"confidence >= {threshold:g}" if threshold else "every confidence"
  figure.suptitle(f"pseudo-labeled images per class ({kept}): the most confident kept first, "
                  "the least confident last", fontsize=9)
  return _save(figure, path)
