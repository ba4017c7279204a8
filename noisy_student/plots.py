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


def confidence_histograms(histogram, path, *, threshold=None, class_names=None):
  """Per class: how confident the teacher was on the images it assigned to that class.

  Args:
    histogram: counts [C, bins] over equal confidence bins of [0, 1].
  """
  histogram = np.asarray(histogram)
  num_classes, bins = histogram.shape
  columns = min(5, num_classes)
  rows = int(np.ceil(num_classes / columns))
  figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.0 * rows), squeeze=False,
                              sharex=True)
  edges = np.linspace(0, 1, bins + 1)
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


def class_counts(before, after, path, *, labels=("after threshold", "kept (with copies)"),
                 class_names=None):
  """Grouped bars: images per class before and after balancing."""
  before, after = np.asarray(before), np.asarray(after)
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


def per_class_accuracy(accuracy_by_class, path, *, title="per-class top-1", class_names=None):
  """Bars of top-1 per class; `accuracy_by_class` is keyed by the class index (as a string)."""
  keys = list(accuracy_by_class)
  values = [accuracy_by_class[k] for k in keys]
  ticks = [class_names[int(k)] for k in keys] if class_names else keys
  figure, ax = plt.subplots(figsize=(max(4, 0.45 * len(keys) + 2), 3))
  ax.bar(range(len(keys)), values, color="tab:green")
  ax.set_xticks(range(len(keys)), ticks, fontsize=7, **_tick_style(ticks))
  ax.set_ylim(0, 1)
  ax.set_title(title, fontsize=9)
  return _save(figure, path)


def training_curves(history, path):
  """Loss parts and labeled accuracy per Keras epoch, from a train run's history.json."""
  figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
  for name in ("loss", "labeled_loss", "unlabeled_loss"):
    if name in history and any(history[name]):
      left.plot(history[name], label=name)
  left.set_xlabel("Keras epoch")
  left.legend(fontsize=7)
  if "accuracy" in history:
    right.plot(history["accuracy"], label="labeled accuracy (training images, as augmented)")
  if "learning_rate" in history:
    lr = right.twinx()
    lr.plot(history["learning_rate"], color="tab:gray", linestyle=":", label="learning rate")
    lr.set_ylabel("learning rate (dotted)", fontsize=7)
    lr.tick_params(labelsize=6)
  right.set_xlabel("Keras epoch")
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
