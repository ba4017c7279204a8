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

import numpy as np
import tensorflow as tf

import efficientnet
from data import manifest as manifest_lib
from data import pipeline
from data import records
from noisy_student import checkpoints
from noisy_student import distribute
from noisy_student.phases import evaluate
from noisy_student import filter_balance
from noisy_student.phases import filter_phase
from noisy_student import plots
from noisy_student.phases import predict
from noisy_student.phases import train
from noisy_student.training import plan as plan_lib

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
  would otherwise mix old results into the new table. Only the rounds may differ, and only by
  length: one list must start with the other (a run with more iterations continues one with
  fewer).

  Args:
    settings: JSON-serialisable dict of everything that shapes the results; its "rounds" a list
      of each round's settings.

  Raises:
    ValueError: naming the workdir and each setting that differs.
  """
  settings = json.loads(json.dumps(settings, default=str))
  path = os.path.join(workdir, SETTINGS)
  if tf.io.gfile.exists(path):
    recorded = _load_json(path)
    # The rounds list aside: compared round by round.
    differing = train.setting_differences(recorded, settings, skip=("rounds",))
    old_rounds, new_rounds = recorded.get("rounds", []), settings["rounds"]
    for k, (old, new) in enumerate(zip(old_rounds, new_rounds), start=1):
      differing += train.setting_differences(old, new, f"round {k} ")
    if differing:
      raise ValueError(f"--workdir {workdir} holds an iterate run with other settings "
                       f"({'; '.join(differing)}): its finished phases would be reused. Use "
                       "another --workdir, or remove this one to start over.")
    if len(new_rounds) <= len(old_rounds):
      return
  elif any(_done(os.path.join(workdir, "iter_0", phase)) for phase in ("train", "eval")):
    logging.warning("iterate: %s has finished phases but no %s (an older run): they are reused "
                    "without checking that they match these settings", workdir, SETTINGS)
  if not write:
    return
  tf.io.gfile.makedirs(workdir)
  records.write_text_atomically(path, json.dumps(settings, indent=1) + "\n")


STUDENT_INITS = ("scratch", "teacher")


@dataclasses.dataclass(frozen=True)
class Round:
  """What one round trains after its teacher's predict and filter.

  Attributes:
    student: the student's `train.TrainConfig` (its model, image size, unlabeled ratio, length,
      noise).
    init: "scratch" (the paper) or "teacher": start the student from its teacher's weights where
      layer shapes match, which reaches a given accuracy in fewer steps.
    finetune: an optional FixRes step after the student: a `train.TrainConfig` with the larger
      image size, its length and frozen blocks, made a fine-tune by `train.finetune_config`
      (eval preprocessing, the tail of the student's schedule). The round is then evaluated at
      that size, and the fine-tuned model is what it hands on as the next teacher.
    finetune_noise: keep dropout and stochastic depth in the layers the fine-tune trains.
  """
  student: train.TrainConfig
  init: str = "scratch"
  finetune: train.TrainConfig | None = None
  finetune_noise: bool = True

  def __post_init__(self):
    if self.init not in STUDENT_INITS:
      raise ValueError(f"--student_init must be one of {STUDENT_INITS}, got {self.init!r}")

  def settings(self):
    """What shapes the round's results (iterate_settings.json)."""
    return {"student": train.result_settings(self.student), "init": self.init,
            "finetune": self.finetune and train.result_settings(self.finetune),
            "finetune_noise": self.finetune_noise}


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


def check_before_the_teacher(teacher_config, filter_rule, *, labeled_data, unlabeled_data,
                             eval_data, validation_data):
  """What would otherwise stop the run hours in, after the teacher: the data's classes and the
  eval sets (`train.load_run_data`), and a filter target no class of the unlabeled images can
  fill (`filter_balance.check_images_per_class`). Returns (the labeled data's `train.RunData`,
  the unlabeled rows)."""
  data = train.load_run_data(teacher_config, labeled_data, eval_data=eval_data,
                             validation_data=validation_data)
  unlabeled_rows = pipeline.count_examples(unlabeled_data)
  filter_balance.check_images_per_class(filter_rule, unlabeled_rows, data.num_classes)
  return data, unlabeled_rows


def _check_growing(teacher_config, rounds, teacher_checkpoint):
  """Each student equal or larger than its teacher; returns the first teacher's variant."""
  first = (teacher_checkpoint.variant_and_classes()[0] if teacher_checkpoint
           else teacher_config.model)
  order = list(efficientnet.VARIANTS)
  models = [first] + [r.student.model for r in rounds]
  sizes = [order.index(m) for m in models]
  if sizes != sorted(sizes):
    raise ValueError(f"students must be equal or larger than their teachers: {models}")
  return first


def run_settings(teacher_config, rounds, *, labeled_data, unlabeled_data, eval_data,
                 validation_data, filter_rule, predict_config, teacher_checkpoint):
  """Everything that shapes an iterate run's results (iterate_settings.json, `check_settings`)."""
  return {
      "teacher_config": train.result_settings(teacher_config),
      "rounds": [r.settings() for r in rounds], "labeled_data": labeled_data,
      "unlabeled_data": unlabeled_data, "eval_data": eval_data,
      "validation_data": validation_data, "filter_rule": dataclasses.asdict(filter_rule),
      "predict_config": dataclasses.asdict(predict_config),
      "teacher_checkpoint": teacher_checkpoint and dataclasses.asdict(teacher_checkpoint)}


def _round_row(k, role, model, metrics, **extra):
  row = {"round": k, "role": role, "model": model, "top1": metrics["top1"], "top5": metrics["top5"]}
  if "validation" in metrics:
    row["validation_top1"] = metrics["validation"]["top1"]
  return dict(row, **extra)


def summary_table(rounds):
  """Lines of a plain-text table: one row per round, the size it was evaluated at, test top-1
  in percent, its change in points over its own teacher (the round before) and over the first
  teacher, and validation top-1 when the rounds were scored on one."""
  validation = all("validation_top1" in r for r in rounds)
  lines = [f"{'round':<6} {'role':<8} {'model':<16} {'size':>5} {'top-1 %':>7} "
           f"{'vs teacher':>10} {'vs round 0':>10}"
           + (f" {'val top-1 %':>11}" if validation else "")]
  for previous, r in zip([None, *rounds], rounds):
    change = f"{100 * (r['top1'] - previous['top1']):+.2f}" if previous else ""
    first = f"{100 * (r['top1'] - rounds[0]['top1']):+.2f}" if previous else ""
    val = f" {100 * r['validation_top1']:>11.2f}" if validation else ""
    size = r.get("eval_image_size") or ""
    lines.append(f"{r['round']:<6} {r['role']:<8} {r['model']:<16} {size:>5} "
                 f"{100 * r['top1']:>7.2f} {change:>10} {first:>10}{val}".rstrip())
  return lines


def _image_size(checkpoint):
  run = checkpoints.load_run_config(checkpoint)
  return run and run["image_size"]


def iterate(teacher_config, rounds, workdir, *, labeled_data, unlabeled_data, eval_data,
            filter_rule=None, validation_data=None, predict_config=None, eval_config=None,
            strategy=None, teacher_checkpoint=None):
  """Runs K = len(rounds) Noisy Student rounds.

  Args:
    teacher_config: `train.TrainConfig` of the first teacher.
    rounds: a `Round` per round: its student's config, start and optional FixRes fine-tune;
      each student equal or larger than the one before.
    workdir: root of `iter_<k>/<phase>/`.
    labeled_data, unlabeled_data, eval_data: data arguments (directories or globs).
    predict_config: `predict.PredictConfig` of the teacher's predictions (top-k, batch size);
      the workers' split is iterate's own.
    eval_config: `evaluate.EvalConfig` of every round's eval.
    validation_data: a held-out labeled split evaluated beside eval_data in every round (choices
      are made on it, and the teacher check uses it), and while training when a config's
      eval_every_keras_epochs is set (the test set is not read then), optional.
    filter_rule: `filter_balance.FilterRule` of every round's filter (default: the paper's).
    strategy: tf.distribute strategy for training, predict and eval; under
      MultiWorkerMirroredStrategy, see the module docstring.
    teacher_checkpoint: a `Teacher` to start from instead of training one: round 0 only
      evaluates it (no `iter_0/train`), and round 1 predicts with it.

  Returns:
    The summary (also `<workdir>/summary.json`): per round model, the values it trained with,
    top-1, top-5, kept images.
  """
  first = _check_growing(teacher_config, rounds, teacher_checkpoint)
  evaluates_while_training = [teacher_config] + [r.student for r in rounds]
  if any(c.eval_every_keras_epochs for c in evaluates_while_training) and not validation_data:
    raise ValueError("--eval_every_keras_epochs in iterate evaluates on --validation_data, which "
                     "is not given (the test set, --eval_data, is read once per model, at its "
                     "end)")
  worker = Worker(*distribute.worker_split(strategy or tf.distribute.get_strategy()))
  predict_config = predict_config or predict.PredictConfig()
  eval_config = eval_config or evaluate.EvalConfig()
  filter_rule = filter_rule or filter_balance.FilterRule()
  settings = run_settings(teacher_config, rounds, labeled_data=labeled_data,
                          unlabeled_data=unlabeled_data, eval_data=eval_data,
                          validation_data=validation_data, filter_rule=filter_rule,
                          predict_config=predict_config, teacher_checkpoint=teacher_checkpoint)
  check_settings(workdir, settings, write=worker.chief)
  check_before_the_teacher(teacher_config, filter_rule, labeled_data=labeled_data,
                           unlabeled_data=unlabeled_data, eval_data=eval_data,
                           validation_data=validation_data)

  def evaluated(teacher, directory):
    return _phase(directory, lambda: _eval(teacher, eval_data, validation_data, directory,
                                           eval_config, strategy, filter_rule.threshold), worker)

  def trained(config, directory, role, **kwargs):
    return _phase(directory, lambda: train.train(
        config, labeled_data, directory, validation_data=validation_data, strategy=strategy,
        eval_config=eval_config, role=role, **kwargs)["total_steps"], worker, everyone=True)

  summary_rounds = []
  teacher = teacher_checkpoint
  if teacher is None:
    teacher_dir = os.path.join(workdir, "iter_0", "train")
    trained(teacher_config, teacher_dir, "teacher")
    teacher = Teacher(teacher_dir)
  metrics = evaluated(teacher, os.path.join(workdir, "iter_0", "eval"))
  summary_rounds.append(_round_row(0, "teacher", first, metrics,
                                   eval_image_size=_image_size(teacher.checkpoint)))
  for k, spec in enumerate(rounds, start=1):
    root = os.path.join(workdir, f"iter_{k}")
    predict_dir, filter_dir = os.path.join(root, "predict"), os.path.join(root, "filter")
    student_dir, eval_dir = os.path.join(root, "train"), os.path.join(root, "eval")

    def run_predict(teacher=teacher, predict_dir=predict_dir):
      model = teacher.load(mixed_precision=predict_config.mixed_precision, strategy=strategy)
      # The teacher sees images as it was trained to, at its own size, not the student's.
      prep = teacher.eval_preprocessing(model)
      worker_config = dataclasses.replace(predict_config, num_workers=worker.count,
                                          worker_index=worker.index)
      names = checkpoints.known_class_names(teacher.checkpoint, checkpoints.model_classes(model),
                                            checkpoint_format=teacher.checkpoint_format)
      summary = predict.predict_phase(model, unlabeled_data, predict_dir, prep, worker_config,
                                      strategy=strategy, class_names=names)
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
    init = teacher.checkpoint if spec.init == "teacher" else None
    trained(spec.student, student_dir, "student", pseudo_labeled_data=filter_dir,
            init_checkpoint=init, init_checkpoint_format=teacher.checkpoint_format)
    handed_on = student_dir
    if spec.finetune is not None:
      handed_on = os.path.join(root, "finetune")
      config = train.finetune_config(spec.finetune, checkpoints.load_run_config(student_dir),
                                     noise=spec.finetune_noise)
      trained(config, handed_on, "finetune", init_checkpoint=student_dir)
    metrics = evaluated(Teacher(handed_on), eval_dir)
    summary_rounds.append(_round_row(
        k, "student", spec.student.model, metrics, pseudo_labeled=stats["totals"]["with_copies"],
        image_size=train.run_image_size(spec.student),
        unlabeled_batch_ratio=spec.student.unlabeled_batch_ratio,
        train_steps=_load_done(student_dir), init=spec.init,
        finetune_image_size=spec.finetune and train.run_image_size(spec.finetune),
        eval_image_size=_image_size(handed_on)))
    teacher = Teacher(handed_on)
  summary = {"rounds": summary_rounds, "table": summary_table(summary_rounds)}
  if not worker.chief:
    return summary
  records.write_text_atomically(os.path.join(workdir, "summary.json"),
                                json.dumps(summary, indent=1) + "\n")
  plots.accuracy_per_round(summary_rounds, os.path.join(workdir, "accuracy_per_round.png"))
  return summary


def _expected_pseudo_rows(rule, num_classes, unlabeled_rows):
  """What the filter will write before it has run: N for every class the teacher gives a kept
  image when it balances and duplicates (so at most N per class); at most N per class or every
  unlabeled image otherwise."""
  if rule.images_per_class is None:
    return unlabeled_rows, "at most"
  if rule.duplicate:
    return rule.images_per_class * num_classes, "at most"
  return min(rule.images_per_class * num_classes, unlabeled_rows), "at most"


def _filter_plan(filter_dir, predict_dir, unlabeled_data, rule, num_classes, unlabeled_rows):
  """The filter's kept and duplicated counts: its stats when it has run, counted from the
  predictions (nothing written) when they exist, else what its rule implies."""
  if _done(filter_dir):
    totals = _load_done(filter_dir)["totals"]
    return {"source": "filter done", **totals}, totals["with_copies"]
  if _done(predict_dir):
    totals = filter_phase.count_selection(predict_dir, unlabeled_data, rule)
    return {"source": "counted from the predictions", **totals}, totals["with_copies"]
  rows, bound = _expected_pseudo_rows(rule, num_classes, unlabeled_rows)
  return {"source": "before predict: from the rule", "with_copies": rows, "bound": bound}, rows


def plan_iterate(teacher_config, rounds, workdir, *, labeled_data, unlabeled_data, eval_data,
                 filter_rule=None, validation_data=None, predict_config=None, strategy=None,
                 teacher_checkpoint=None):
  """What `iterate` with these arguments would do, per round and phase, checked as it checks
  them (the models' order, the settings against the workdir's, the data's rows and classes, the
  teacher), without training, predicting or writing anything.

  Returns:
    {"rounds": [per round {"round", "phases": {phase: its plan}}], "lines": the plan for
    people}: train phases as `plan.TrainPlan.as_dict()`, predict its image size and storage,
    filter its counts (`_filter_plan`), eval its image size.
  """
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  predict_config = predict_config or predict.PredictConfig()
  filter_rule = filter_rule or filter_balance.FilterRule()
  _check_growing(teacher_config, rounds, teacher_checkpoint)
  check_settings(workdir, run_settings(
      teacher_config, rounds, labeled_data=labeled_data, unlabeled_data=unlabeled_data,
      eval_data=eval_data, validation_data=validation_data, filter_rule=filter_rule,
      predict_config=predict_config, teacher_checkpoint=teacher_checkpoint), write=False)
  data, unlabeled_rows = check_before_the_teacher(
      teacher_config, filter_rule, labeled_data=labeled_data, unlabeled_data=unlabeled_data,
      eval_data=eval_data, validation_data=validation_data)
  key = _first_key(unlabeled_data)
  record_bytes = len(predict.prediction_record(
      key, np.full(data.num_classes, 1.0 / data.num_classes, np.float32), predict_config.top_k))

  def planned(config, role, pseudo_rows=None):
    return train.plan_run(config, dataclasses.replace(data, pseudo_rows=pseudo_rows,
                                                      pseudo_labeled_data=None),
                          replicas=replicas, role=role)

  planned_rounds, lines = [], []
  if teacher_checkpoint is None:
    teacher = planned(teacher_config, "teacher")
    size = teacher.image_size
    phases = {"train": teacher.as_dict(), "eval": {"image_size": size}}
    lines += ["round 0:", *[f"  {line}" for line in teacher.lines()]]
  else:
    size = teacher_checkpoint.image_size or _checkpoint_image_size(teacher_checkpoint)
    phases = {"eval": {"image_size": size, "checkpoint": teacher_checkpoint.checkpoint}}
    lines += [f"round 0: teacher {teacher_checkpoint.checkpoint} at {size}px (evaluated only)"]
  planned_rounds.append({"round": 0, "phases": phases})
  for k, spec in enumerate(rounds, start=1):
    root = os.path.join(workdir, f"iter_{k}")
    storage = plan_lib.prediction_storage(unlabeled_rows, record_bytes)
    kept, pseudo_rows = _filter_plan(os.path.join(root, "filter"), os.path.join(root, "predict"),
                                     unlabeled_data, filter_rule, data.num_classes,
                                     unlabeled_rows)
    student = planned(spec.student, "student", pseudo_rows)
    phases = {"predict": {"image_size": size, "storage": storage}, "filter": kept,
              "train": student.as_dict()}
    lines += [f"round {k}:",
              f"  predict {unlabeled_rows:,} images at {size}px: {storage['bytes'] / 1e9:.3g} GB "
              f"of predictions ({record_bytes} bytes a record)",
              f"  filter: {kept.get('bound', '')} {pseudo_rows:,} pseudo-labeled rows "
              f"({kept['source']})".replace(":  ", ": "),
              *[f"  {line}" for line in student.lines()]]
    size = student.image_size
    if spec.finetune is not None:
      continued = {"config": dataclasses.asdict(spec.student), "total_steps": student.total_steps}
      tune = planned(train.finetune_config(spec.finetune, continued, noise=spec.finetune_noise),
                     "finetune")
      phases["finetune"] = tune.as_dict()
      lines += [f"  {line}" for line in tune.lines()]
      size = tune.image_size
    phases["eval"] = {"image_size": size}
    lines.append(f"  eval at {size}px")
    planned_rounds.append({"round": k, "phases": phases})
  return {"workdir": workdir, "replicas": replicas, "rounds": planned_rounds, "lines": lines}


def _checkpoint_image_size(teacher):
  """The size a given teacher sees images at: its train run's, else its variant's."""
  run = checkpoints.load_run_config(teacher.checkpoint) if teacher.checkpoint_format == "keras" \
      else None
  if run is not None:
    return run["image_size"]
  variant = (teacher.model_args or {}).get("variant") or teacher.variant_and_classes()[0]
  return (teacher.model_args or {}).get("image_size") or efficientnet.get_variant(
      variant).resolution


def _first_key(data):
  """The key of the first record of `data`: prediction records carry it, so their size depends
  on it."""
  for serialized in pipeline.ordered_records(pipeline.resolve_shards(data)).take(1):
    example = tf.train.Example.FromString(serialized.numpy())
    return example.features.feature[records.KEY].bytes_list.value[0]
  raise ValueError(f"--unlabeled_data {data!r} holds no records")
