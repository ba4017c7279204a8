"""The iterate mode: teacher -> (predict -> filter -> student -> eval) x K, resumable.

Each phase writes under `<workdir>/iter_<k>/<phase>/` and marks itself done with a `DONE` file
written last; a rerun skips done phases and resumes the interrupted one (predict skips finished
shards, train resumes from its last backup). `<workdir>/iterate_settings.json` records what the
run was asked to do; a rerun with other settings is refused before any work (`check_settings`).

Under MultiWorkerMirroredStrategy every worker runs `iterate` with the same flags and a workdir
they all see (GCS, NFS): training runs on every worker (its steps are collective), predict splits
the unlabeled shards between them, and filter and eval run on the chief alone. Only the chief
marks phases done and writes the summary; the other workers wait for its marks.
"""

import dataclasses
import json
import logging
import os
import time

import tensorflow as tf

import efficientnet
from data import manifest as manifest_lib
from data import records
from noisy_student import checkpoints
from noisy_student import distribute
from noisy_student.phases import evaluate
from noisy_student import filter_balance
from noisy_student.phases import filter_phase
from noisy_student import plots
from noisy_student.phases import predict
from noisy_student.phases import train

DONE = "DONE"
SETTINGS = "iterate_settings.json"


def _done(directory):
  return tf.io.gfile.exists(os.path.join(directory, DONE))


def _mark_done(directory, result):
  records.write_text_atomically(os.path.join(directory, DONE),
                                json.dumps(result, indent=1, default=str) + "\n")


def _load_json(path):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _load_done(directory):
  return _load_json(os.path.join(directory, DONE))


# How often a worker looks for the chief's marks, and how often it says it is still waiting.
POLL_SECONDS = 2.0
WAIT_LOG_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Worker:
  """This process's place among `count` workers of one run; the chief (index 0) writes."""
  count: int = 1
  index: int = 0

  @property
  def chief(self):
    return self.index == 0


def wait_for(paths, worker, what):
  """Blocks until every path exists, saying so every WAIT_LOG_SECONDS."""
  start = last_log = time.monotonic()
  while not all(tf.io.gfile.exists(path) for path in paths):
    if time.monotonic() - last_log >= WAIT_LOG_SECONDS:
      last_log = time.monotonic()
      logging.info("iterate: worker %d still waits for %s after %.0f s (is every worker still "
                   "running, and do all see the same --workdir?)", worker.index, what,
                   last_log - start)
    time.sleep(POLL_SECONDS)


def _phase(directory, run, worker=Worker(), everyone=False):
  """Runs `run()` unless `directory` is marked done; returns its (recorded) result.

  With several workers, `everyone` phases run on every worker and the others on the chief alone;
  either way only the chief marks the phase done (after its outputs are final), and the other
  workers return the result it recorded.
  """
  if _done(directory):
    logging.info("iterate: %s done, skipped", directory)
    return _load_done(directory)
  if worker.chief or everyone:
    tf.io.gfile.makedirs(directory)
    result = run()
  if worker.chief:
    _mark_done(directory, result)
    return result
  logging.info("iterate: worker %d waits for the chief to finish %s", worker.index, directory)
  wait_for([os.path.join(directory, DONE)], worker, f"the chief to finish {directory}")
  return _load_done(directory)


def check_settings(workdir, settings, write=True):
  """Refuses to resume `workdir` under other settings; records them for the next run (when
  `write`: the chief of several workers).

  Finished phases are reused by their DONE marks, so a changed recipe run into the same workdir
  would otherwise mix old results into the new table. Only `student_models` may differ: one list
  must start with the other (a run with more iterations continues one with fewer).

  Args:
    settings: JSON-serialisable dict of everything that shapes the results.

  Raises:
    ValueError: naming the workdir and each setting that differs.
  """
  settings = json.loads(json.dumps(settings, default=str))
  path = os.path.join(workdir, SETTINGS)
  if tf.io.gfile.exists(path):
    recorded = _load_json(path)
    differing = _differences(recorded, settings)
    old_models, new_models = recorded.get("student_models", []), settings["student_models"]
    common = min(len(old_models), len(new_models))
    if old_models[:common] != new_models[:common]:
      differing.append(f"student_models: {old_models} -> {new_models}")
    if differing:
      raise ValueError(f"--workdir {workdir} holds an iterate run with other settings "
                       f"({'; '.join(differing)}): its finished phases would be reused. Use "
                       "another --workdir, or remove this one to start over.")
    if len(new_models) <= len(old_models):
      return
  elif any(_done(os.path.join(workdir, "iter_0", phase)) for phase in ("train", "eval")):
    logging.warning("iterate: %s has finished phases but no %s (an older run): they are reused "
                    "without checking that they match these settings", workdir, SETTINGS)
  if not write:
    return
  tf.io.gfile.makedirs(workdir)
  records.write_text_atomically(path, json.dumps(settings, indent=1) + "\n")


def _differences(recorded, settings, prefix=""):
  """'name: old -> new' for every leaf that differs, student_models aside."""
  found = []
  for key in sorted(set(recorded) | set(settings)):
    if not prefix and key == "student_models":
      continue
    old, new = recorded.get(key), settings.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      found += _differences(old, new, f"{prefix}{key}.")
    elif old != new:
      found.append(f"{prefix}{key}: {old!r} -> {new!r}")
  return found


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A checkpoint that predicts pseudo labels, as `checkpoints` loads it and sees its images:
  round 0's train run, each student's, or one given to iterate (--teacher_checkpoint: a train
  workdir or .keras file of ours, or a tensorflow/tpu checkpoint with checkpoint_format
  "reference").

  Attributes:
    checkpoint, checkpoint_format, model_args, num_classes: `checkpoints.load_model`'s.
    pad_crop, normalization, image_size: `checkpoints.eval_preprocessing`'s (a checkpoint
      without its train run; image_size also overrides a run's own).
  """
  checkpoint: str
  checkpoint_format: str = "keras"
  model_args: dict | None = None
  num_classes: int | None = None
  pad_crop: bool | None = None
  normalization: str = "imagenet"
  image_size: int | None = None

  def load(self, **kwargs):
    return checkpoints.load_model(self.checkpoint, checkpoint_format=self.checkpoint_format,
                                  model_args=self.model_args, num_classes=self.num_classes,
                                  **kwargs)

  def eval_preprocessing(self, model):
    return checkpoints.eval_preprocessing(
        self.checkpoint, model, checkpoint_format=self.checkpoint_format, pad_crop=self.pad_crop,
        normalization=self.normalization, image_size=self.image_size)

  def variant_and_classes(self):
    """(variant, class count), from its train run when it has one, else from the model."""
    run = (checkpoints.load_run_config(self.checkpoint) if self.checkpoint_format == "keras"
           else None)
    if run is not None:
      return run["config"]["model"], run["num_classes"]
    if self.checkpoint_format == "reference":
      variant = self.model_args["variant"]
      return variant, self.num_classes or efficientnet.checkpoint_classes(self.checkpoint, variant)
    model = self.load()
    return model.efficientnet_config["variant"], checkpoints.model_classes(model)


def _eval(teacher, eval_data, validation_data, directory, config, strategy, threshold):
  """The round's eval, into `directory`: for a teacher, its reliability diagram is its confidence
  against its accuracy, with the filter's `threshold` marked. Returns the metrics its DONE mark
  keeps (metrics.json has the confusion matrix too)."""
  model = teacher.load(mixed_precision=config.mixed_precision, strategy=strategy)
  prep = teacher.eval_preprocessing(model)
  return evaluate.compact_metrics(evaluate.eval_phase(
      model, prep, directory, eval_data=eval_data, validation_data=validation_data, config=config,
      strategy=strategy, confidence_threshold=threshold,
      class_names=manifest_lib.class_names_for(eval_data, model.output_shape[-1])))


# A teacher whose top-1 is less than this share of the way from chance to 100% is not used.
MIN_SKILL = 0.05


def check_teacher(metrics, num_classes, teacher_dir):
  """Refuses to pseudo-label with a teacher at chance: its labels would train the student on
  noise (seen: a collapsed teacher labelled everything as 3 of 10 classes). Judged on the
  validation split when there is one, else on the eval data."""
  scored = metrics.get("validation", metrics)
  chance = 1.0 / num_classes
  floor = chance + MIN_SKILL * (1.0 - chance)
  if not scored["top1"] >= floor:
    raise ValueError(
        f"the teacher {teacher_dir} is at chance: top-1 {scored['top1']:.4f} on "
        f"{scored['num_examples']} {'validation' if 'validation' in metrics else 'eval'} images, "
        f"below {floor:.4f} ({num_classes} classes). Its pseudo labels would be noise; see its "
        "history.json (inference_check, the loss) before training a student on them.")


def _round_row(k, role, model, metrics, **extra):
  row = {"round": k, "role": role, "model": model, "top1": metrics["top1"], "top5": metrics["top5"]}
  if "validation" in metrics:
    row["validation_top1"] = metrics["validation"]["top1"]
  return dict(row, **extra)


def summary_table(rounds):
  """Lines of a plain-text table: one row per round, test top-1 in percent and its change over
  the first teacher in points, and validation top-1 when the rounds were scored on one."""
  validation = all("validation_top1" in r for r in rounds)
  lines = [f"{'round':<6} {'role':<8} {'model':<16} {'top-1 %':>7} {'vs teacher':>10}"
           + (f" {'val top-1 %':>11}" if validation else "")]
  for r in rounds:
    change = f"{100 * (r['top1'] - rounds[0]['top1']):+.2f}" if r["round"] else ""
    val = f" {100 * r['validation_top1']:>11.2f}" if validation else ""
    lines.append(f"{r['round']:<6} {r['role']:<8} {r['model']:<16} {100 * r['top1']:>7.2f} "
                 f"{change:>10}{val}".rstrip())
  return lines


def iterate(teacher_config, student_models, workdir, *, labeled_data, unlabeled_data, eval_data,
            filter_rule=None, validation_data=None, predict_config=None, eval_config=None,
            strategy=None, student_overrides=None, student_init="scratch",
            teacher_checkpoint=None):
  """Runs K = len(student_models) Noisy Student rounds.

  Args:
    teacher_config: `train.TrainConfig` of the first teacher; students copy it with their model.
    student_models: variant per round, each equal or larger than the one before.
    workdir: root of `iter_<k>/<phase>/`.
    labeled_data, unlabeled_data, eval_data: data arguments (directories or globs).
    predict_config: `predict.PredictConfig` of the teacher's predictions (top-k, batch size);
      the workers' split is iterate's own.
    eval_config: `evaluate.EvalConfig` of every round's eval.
    validation_data: a held-out labeled split evaluated beside eval_data in every round (choices
      are made on it, and the teacher check uses it), and while training when teacher_config's
      eval_every_keras_epochs is set (the test set is not read then), optional.
    filter_rule: `filter_balance.FilterRule` of every round's filter (default: the paper's).
    strategy: tf.distribute strategy for training, predict and eval; under
      MultiWorkerMirroredStrategy, see the module docstring.
    student_overrides: TrainConfig fields to change for students (e.g. epochs).
    student_init: "scratch" (the paper) or "teacher": start each student from its teacher's
      weights where layer shapes match, which reaches a given accuracy in fewer steps.
    teacher_checkpoint: a `Teacher` to start from instead of training one: round 0 only
      evaluates it (no `iter_0/train`), and round 1 predicts with it.

  Returns:
    The summary (also `<workdir>/summary.json`): per round model, top-1, top-5, kept images.
  """
  first = (teacher_checkpoint.variant_and_classes()[0] if teacher_checkpoint
           else teacher_config.model)
  order = list(efficientnet.VARIANTS)
  sizes = [order.index(first)] + [order.index(m) for m in student_models]
  if sizes != sorted(sizes):
    raise ValueError(f"students must be equal or larger than their teachers: "
                     f"{[first] + list(student_models)}")
  if teacher_config.eval_every_keras_epochs and not validation_data:
    raise ValueError("--eval_every_keras_epochs in iterate evaluates on --validation_data, which "
                     "is not given (the test set, --eval_data, is read once per model, at its "
                     "end)")
  worker = Worker(*distribute.worker_split(strategy or tf.distribute.get_strategy()))
  predict_config = predict_config or predict.PredictConfig()
  eval_config = eval_config or evaluate.EvalConfig()
  filter_rule = filter_rule or filter_balance.FilterRule()
  # How often training evaluates shapes no result: a rerun may change it.
  recorded_config = {k: v for k, v in dataclasses.asdict(teacher_config).items()
                     if k != "eval_every_keras_epochs"}
  settings = {
      "teacher_config": recorded_config, "student_models": list(student_models),
      "labeled_data": labeled_data, "unlabeled_data": unlabeled_data, "eval_data": eval_data,
      "validation_data": validation_data,
      "filter_rule": dataclasses.asdict(filter_rule),
      "predict_config": dataclasses.asdict(predict_config),
      "student_overrides": student_overrides or {}, "student_init": student_init,
      "teacher_checkpoint": teacher_checkpoint and dataclasses.asdict(teacher_checkpoint)}
  check_settings(workdir, settings, write=worker.chief)
  rounds = []
  teacher = teacher_checkpoint
  if teacher is None:
    teacher_dir = os.path.join(workdir, "iter_0", "train")
    _phase(teacher_dir, lambda: train.train(teacher_config, labeled_data, teacher_dir,
                                            validation_data=validation_data,
                                            strategy=strategy)["total_steps"], worker,
           everyone=True)
    teacher = Teacher(teacher_dir)
  metrics = _phase(os.path.join(workdir, "iter_0", "eval"),
                   lambda: _eval(teacher, eval_data, validation_data,
                                 os.path.join(workdir, "iter_0", "eval"), eval_config, strategy,
                                 filter_rule.threshold),
                   worker)
  rounds.append(_round_row(0, "teacher", first, metrics))
  for k, student in enumerate(student_models, start=1):
    root = os.path.join(workdir, f"iter_{k}")
    predict_dir, filter_dir = os.path.join(root, "predict"), os.path.join(root, "filter")
    student_dir, eval_dir = os.path.join(root, "train"), os.path.join(root, "eval")

    def run_predict(teacher=teacher, predict_dir=predict_dir):
      model = teacher.load(mixed_precision=predict_config.mixed_precision, strategy=strategy)
      # The teacher sees images as it was trained to, at its own size, not the student's.
      prep = teacher.eval_preprocessing(model)
      worker_config = dataclasses.replace(predict_config, num_workers=worker.count,
                                          worker_index=worker.index)
      summary = predict.predict_phase(model, unlabeled_data, predict_dir, prep, worker_config,
                                      strategy=strategy)
      if worker.count > 1 and worker.chief:
        # A worker writes its summary after its shards: with every summary there, the chief
        # combines them into the summary.json the filter reads.
        wait_for(predict.worker_summary_paths(predict_dir, worker.count), worker,
                 f"the other workers' predictions in {predict_dir}")
        summary = predict.combine_worker_summaries(predict_dir, worker.count)
      return summary["images"]

    check_teacher(metrics, teacher.variant_and_classes()[1], teacher.checkpoint)
    _phase(predict_dir, run_predict, worker, everyone=True)
    stats = _phase(filter_dir, lambda: filter_phase.filter_and_balance_phase(
        predict_dir, unlabeled_data, filter_dir, filter_rule),
                   worker)
    config = dataclasses.replace(teacher_config, model=student, **(student_overrides or {}))
    init = teacher.checkpoint if student_init == "teacher" else None
    _phase(student_dir, lambda: train.train(config, labeled_data, student_dir,
                                            pseudo_labeled_data=filter_dir,
                                            validation_data=validation_data, init_checkpoint=init,
                                            init_checkpoint_format=teacher.checkpoint_format,
                                            strategy=strategy)["total_steps"],
           worker, everyone=True)
    metrics = _phase(eval_dir, lambda: _eval(Teacher(student_dir), eval_data, validation_data,
                                             eval_dir, eval_config, strategy,
                                             filter_rule.threshold), worker)
    rounds.append(_round_row(k, "student", student, metrics,
                             pseudo_labeled=stats["totals"]["with_copies"]))
    teacher = Teacher(student_dir)
  summary = {"rounds": rounds, "table": summary_table(rounds)}
  if not worker.chief:
    return summary
  records.write_text_atomically(os.path.join(workdir, "summary.json"),
                                json.dumps(summary, indent=1) + "\n")
  plots.accuracy_per_round(rounds, os.path.join(workdir, "accuracy_per_round.png"))
  return summary
