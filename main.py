"""Noisy Student: `python main.py --mode=MODE`, MODE one of convert, train, finetune, predict,
filter, eval, iterate, beam, export.

The only module that reads flags: each mode turns them into arguments of one phase function
(noisy_student/, data/). Every flag is documented in flags.md; `--flagfile=recipes/<name>.flags`
loads a recipe.
"""

import dataclasses
import glob
import json
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging

# The project's directory: the clone, or site-packages/noisy_student_tf/, where `pip install .`
# puts this file beside data/, efficientnet/, noisy_student/ and recipes/ (nothing generic lands
# in site-packages itself). There the `noisy-student` command imports this file as
# noisy_student_tf.main, and the modules beside it import each other by their own names.
HOME = os.path.dirname(os.path.abspath(__file__))
if __package__ and HOME not in sys.path:
  sys.path.insert(0, HOME)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Imports TensorFlow without its start-up lines; before any module below imports it.
from noisy_student import quiet_start  # noqa: E402

# Each enum flag's choices and each default are the defining module's own. (beam_pipeline is
# imported by the beam mode alone: Apache Beam is an optional install.)
from data import convert  # noqa: E402
from data import corruptions  # noqa: E402
from data import manifest  # noqa: E402
from data import pipeline  # noqa: E402
from data import subsets  # noqa: E402
from efficientnet import spec  # noqa: E402
from noisy_student import checkpoints  # noqa: E402
from noisy_student import distribute  # noqa: E402
from noisy_student import filter_balance  # noqa: E402
from noisy_student import inference  # noqa: E402
from noisy_student.phases import evaluate  # noqa: E402
from noisy_student.phases import filter_phase  # noqa: E402
from noisy_student.phases import iterate  # noqa: E402
from noisy_student.phases import predict  # noqa: E402
from noisy_student.phases import robustness  # noqa: E402
from noisy_student.phases import train  # noqa: E402
from noisy_student.training import schedules  # noqa: E402

MODES = ("convert", "train", "finetune", "predict", "filter", "eval", "iterate", "beam", "export")
ROBUSTNESS = robustness.KINDS
DEFAULT_DATA = "workdir/fashion_mnist"  # the demo's data set (scripts/demo.sh makes it)
# What "no noise" sets (iterate --noteacher_noise): no RandAugment, Cutout, dropout or
# stochastic depth.
NO_NOISE = {"randaugment_layers": 0, "cutout": False, "dropout_rate": 0.0, "survival_prob": 1.0}

FLAGS = flags.FLAGS

# Common.
flags.DEFINE_enum("mode", "iterate", MODES, "What to run.")
flags.DEFINE_string("workdir", None, "Directory for everything a run writes (train, finetune, "
                    "iterate; eval without --output).")
flags.DEFINE_enum("model", "efficientnet-b0", list(spec.VARIANTS), "EfficientNet variant.")
flags.DEFINE_integer("image_size", None, "Input resolution (default: the variant's, 32 with "
                     "--small_image).", lower_bound=8)
flags.DEFINE_bool("small_image", False, "The reference's 32x32 model and preprocessing.")
flags.DEFINE_bool("pad_crop", None, "Small-image preprocessing (reflect-pad image_size//8, 4 at "
                  "32, + random crop; no eval center crop) instead of the inception crop "
                  "(default: --small_image).")
flags.DEFINE_float("width_coefficient", None, "Override the variant's width scaling.",
                   lower_bound=0.01)
flags.DEFINE_float("depth_coefficient", None, "Override the variant's depth scaling.",
                   lower_bound=0.01)
flags.DEFINE_integer("num_classes", None, "Classes (default: from the labeled data's manifest).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seeds every random choice.", lower_bound=0)
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES, "tf.distribute strategy for "
                  "train, predict, eval and iterate (auto: TPU with --tpu, every GPU, else the "
                  "CPU); gpu or tpu without one is an error.")
flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu/auto.")
flags.DEFINE_enum("mixed_precision", "none", list(distribute.PRECISION_POLICIES),
                  "Compute dtype of train, predict and eval (weights, logits and probabilities "
                  "stay float32; float16 training scales the loss).")
flags.DEFINE_bool("jit_compile", None, "XLA for the training step and the inference steps of "
                  "predict and eval (default: on for GPUs and TPUs, off on CPUs).")
flags.DEFINE_integer("batch_size", 128, "Labeled images per training batch.", lower_bound=1)
flags.DEFINE_bool("dry_run", False, "train/finetune/iterate: check everything the run would "
                  "check (flags, data, checkpoints, the workdir), print its plan (per round and "
                  "phase: rows, batch per replica, steps and Keras epochs, warm-up, learning "
                  "rates, image sizes, prediction storage, the filter's counts) and stop; writes "
                  "nothing but, with --output=FILE, the plan as JSON.")
flags.DEFINE_bool("overwrite", False, "train/finetune: a --workdir holding a run of other "
                  "settings is refused; with this, what that run left is removed first.")
flags.DEFINE_integer("inference_batch_size", inference.BATCH_SIZE, "Images per inference batch "
                     "in predict, eval, beam and iterate's predict and eval (a training batch can "
                     "be far larger than fits at inference resolution).", lower_bound=1)

# Data.
# No data flag has a default: a run on other data that left one out would silently read the
# demo's Fashion-MNIST (same class count, so nothing would complain). The demo's recipe names
# its paths.
flags.DEFINE_string("labeled_data", None, "Labeled shards: a convert output directory or a "
                    "glob.")
flags.DEFINE_string("unlabeled_data", None, "Unlabeled shards.")
flags.DEFINE_string("eval_data", None, "Evaluation shards (the test set); train and iterate "
                    "evaluate on it at the end when given.")
flags.DEFINE_string("validation_data", None, "Held-out labeled shards evaluated beside "
                    "--eval_data by train, eval and iterate (make them with "
                    "--validation_per_class); choices are made on them, not on the test set.")
flags.DEFINE_string("pseudo_labeled_data", None, "Filter output for a student (train mode).")
flags.DEFINE_enum("normalization", "manifest", train.NORMALIZATIONS,
                  "Mean/std: measured by the converter (manifest) or the reference's constants.")

# convert.
flags.DEFINE_enum("source", "idx", convert.SOURCES, "convert: input format.")
flags.DEFINE_string("input", None, "convert: input path.")
flags.DEFINE_string("output", None, "convert/predict/filter/beam/export: output directory; "
                    "eval: where metrics.json goes (default --workdir); train/finetune/iterate: "
                    "with --dry_run, the file its plan is written to as JSON.")
flags.DEFINE_string("split", "train", "convert: split name (for idx also train or t10k).")
flags.DEFINE_integer("num_shards", 4, "convert/filter/beam: number of output shards.",
                     lower_bound=1)
flags.DEFINE_bool("unlabeled", False, "convert: drop the labels.")
flags.DEFINE_integer("limit", None, "convert: only the first N images.", lower_bound=1)
flags.DEFINE_list("class_names", None, "convert: class names in label order, comma-separated "
                  "(default: the source's own, else the label numbers); reports use them. "
                  "export and predict's --predictions_format table: the checkpoint's class names "
                  "(default: its train run's labeled data's, else the label numbers).")
flags.DEFINE_integer("labeled_per_class", None, "convert: afterwards split the converted data "
                     "into OUTPUT/labeled (N per class, seeded) and OUTPUT/unlabeled (the rest).",
                     lower_bound=1)
flags.DEFINE_integer("validation_per_class", 0, "convert: also hold out N per class (seeded) as "
                     "OUTPUT/validation, in neither pool; without --labeled_per_class the rest "
                     "is OUTPUT/labeled (SVHN's dev split).", lower_bound=0)

# train / finetune.
flags.DEFINE_float("epochs", None, "Training length in epochs of the labeled data.",
                   lower_bound=0)
flags.DEFINE_integer("train_steps", None, "Training length in steps (instead of --epochs).",
                     lower_bound=1)
flags.DEFINE_float("unlabeled_batch_ratio", 1.0, "Pseudo-labeled rows per labeled row in a "
                   "student batch.", lower_bound=0)
flags.DEFINE_enum("pseudo_labels", "soft", pipeline.PSEUDO_LABELS, "Train on the teacher's soft "
                  "distribution or its one-hot argmax (with label smoothing).")
flags.DEFINE_string("init_checkpoint", None, "Warm start: a train workdir or .keras file (or a "
                    "reference checkpoint with --checkpoint_format=reference).")
flags.DEFINE_integer("randaugment_layers", 0, "RandAugment N (0: off).", lower_bound=0)
flags.DEFINE_float("randaugment_magnitude", 0.0, "RandAugment M (0-30).", lower_bound=0)
flags.DEFINE_bool("cutout", False, "Cutout after RandAugment (the small-image recipe).")
flags.DEFINE_bool("flip", True, "Random horizontal flips (off for digits).")
flags.DEFINE_float("dropout_rate", None, "Dropout before the classifier (default: variant's).",
                   lower_bound=0, upper_bound=0.99)
flags.DEFINE_float("survival_prob", None, "Stochastic depth survival of the last block "
                   "(default 0.8; 1 turns it off).", lower_bound=0.01, upper_bound=1)
flags.DEFINE_float("base_learning_rate", 0.016, "Learning rate per 256 labeled images.",
                   lower_bound=0)
flags.DEFINE_float("final_learning_rate", None, "Decay to this rate per 256 images by the end "
                   "instead of every --lr_decay_epochs.")
flags.DEFINE_float("warmup_epochs", 5.0, "Linear warm-up epochs.", lower_bound=0)
flags.DEFINE_float("lr_decay_epochs", 2.4, "Epochs per exponential decay step.", lower_bound=0.01)
flags.DEFINE_float("lr_decay_factor", 0.97, "Exponential decay factor.", lower_bound=0,
                   upper_bound=1)
flags.DEFINE_float("weight_decay", 1e-5, "L2 on all non-batch-norm weights (TF1 l2_loss).",
                   lower_bound=0)
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing of labeled (and hard) targets.",
                   lower_bound=0, upper_bound=1)
flags.DEFINE_float("ema_decay", 0.9999, "Weight EMA decay (0 turns it off).", lower_bound=0,
                   upper_bound=0.999999)
flags.DEFINE_enum("batch_norm_recalibration", train.TrainConfig.batch_norm_recalibration,
                  train.BATCH_NORM_RECALIBRATIONS, "train: at the end, recompute the batch-norm "
                  "moving statistics with the final EMA weights on --batch_norm_recalibration_"
                  "images labeled images (eval preprocessing): always; never (keep the averages, "
                  "as the reference); auto: only when the averages leave the model more than "
                  f"{train.RECALIBRATION_GAP:.0%} top-1 below its batch-statistics accuracy on "
                  "those images (short runs; history.json inference_check says which).")
flags.DEFINE_integer("batch_norm_recalibration_images",
                     train.TrainConfig.batch_norm_recalibration_images, "train: the labeled "
                     "images of --batch_norm_recalibration and of the inference-mode check.",
                     lower_bound=1)
flags.DEFINE_integer("eval_every_keras_epochs", 0, "train/finetune/iterate: every N Keras epochs "
                     "(each about one pass over the labeled data, at most "
                     f"{train.MAX_STEPS_PER_KERAS_EPOCH:,} steps) and after "
                     "the last, evaluate the model as it would be saved then (EMA weights, batch "
                     "norm statistics as at the end) on --validation_data, else --eval_data "
                     "(iterate: --validation_data only); into history.json, TensorBoard and "
                     "training_curves.png. 0: off.", lower_bound=0)
flags.DEFINE_list("freeze_blocks", ["0"], "train/finetune: freeze the stem and the first N blocks "
                  "(they run in inference mode: batch norm with its moving statistics, no "
                  "stochastic depth); iterate: per round, for its fine-tune.")
flags.DEFINE_bool("finetune_noise", True, "finetune: keep --dropout_rate and --survival_prob "
                  "in the layers the fine-tune trains, as the reference does (the frozen blocks "
                  "run in inference mode; off: no dropout or stochastic depth anywhere). It "
                  "always trains on eval-preprocessed images, without RandAugment or Cutout.")

# predict / eval.
flags.DEFINE_string("checkpoint", None, "predict/eval/export: a train workdir or .keras file, "
                    "or a "
                    "tensorflow/tpu checkpoint with --checkpoint_format=reference.")
flags.DEFINE_enum("checkpoint_format", "keras", checkpoints.FORMATS, "--checkpoint kind.")
flags.DEFINE_integer("inference_image_size", None, "predict/eval/beam: run --checkpoint at this "
                     "size (default: the size its own train run used, else its variant's; "
                     "--image_size, which may be a student's, never changes it).", lower_bound=8)
flags.DEFINE_float("temperature", 1.0, "train (student): soft targets p^(1/T) / sum, i.e. "
                   "softmax(logits / T), from predict's probabilities (stored at T=1, which the "
                   "filter's threshold sees), as the reference does.",
                   lower_bound=1e-3)
flags.DEFINE_integer("top_k", None, "predict: store only the k largest probabilities (float16).",
                     lower_bound=1)
flags.DEFINE_integer("num_workers", 1, "predict: machines sharing the shards.", lower_bound=1)
flags.DEFINE_enum("predictions_format", "tfrecord", ["tfrecord", "jsonl", "csv"], "predict: "
                  "tfrecord writes the prediction shards only (what filter reads); jsonl or csv "
                  "also writes predictions.jsonl or .csv beside them for people, one row per image "
                  "in input order: key, path (the source file, for --source=folder data), class, "
                  "class name, confidence and the 5 most probable classes.")
flags.DEFINE_integer("worker_index", 0, "predict: this machine's index.", lower_bound=0)

# filter.
flags.DEFINE_string("predictions", None, "filter: predict's output directory.")
flags.DEFINE_float("confidence_threshold", filter_balance.FilterRule.threshold,
                   "filter: keep confidence >= this.", lower_bound=0, upper_bound=1)
flags.DEFINE_integer("images_per_class", filter_balance.FilterRule.images_per_class,
                     "filter: per-class target N: exactly the N most confident (the reference "
                     "keeps a random subset of expected size N above a per-class threshold on a "
                     "0.01 grid). The default is the paper's ImageNet N: a target that would fill "
                     f"a class beyond {filter_balance.MAX_FILL_FACTOR}x its kept images is "
                     "refused before work, naming a value that fits (iterate: before the "
                     "teacher trains).", lower_bound=1)
flags.DEFINE_bool("balance", True, "filter: keep the N most confident per class (off: keep all "
                  "above the threshold).")
flags.DEFINE_bool("duplicate_to_balance", True, "filter: fill short classes to exactly N by "
                  "whole copies plus a seeded subset (the reference draws an unseeded random "
                  "number of copies per image, N only in expectation).")

# beam.
flags.DEFINE_list("beam_options", [], "beam: Apache Beam pipeline options, comma-separated, e.g. "
                  "--runner=DataflowRunner,--project=P,--region=R; an option whose value holds "
                  "commas in double quotes (default: the in-process FnApiRunner).")

# eval robustness.
flags.DEFINE_list("robustness", [], "eval: any of corruptions, perturbations, fgsm (made from "
                  "--eval_data's split on the fly; mCE and mFR relative to --robustness_baseline) "
                  "and the released sets with a 1,000-class ImageNet model, normalised by "
                  "AlexNet as published: imagenet_a (--eval_data is ImageNet-A's <wnid>/ folders; "
                  "top-1 over its 200 classes' logits), imagenet_c (--corrupted_data), imagenet_p "
                  "(--perturbed_data). The paper's L2: ImageNet-A top-1 83.7%, mCE 28.3, mFR 12.2 "
                  "(Xie et al. 2020, abstract). E.g. --mode=eval --robustness=imagenet_a "
                  "--eval_data=imagenet-a --checkpoint=gs://cloud-tpu-checkpoints/efficientnet/"
                  "noisystudent/noisy_student_efficientnet-l2 --checkpoint_format=reference "
                  "--model=efficientnet-l2.")
flags.DEFINE_string("robustness_baseline", None, "eval: a robustness.json (or metrics.json) "
                    "whose results normalise this model's (e.g. the teacher's): mCE and mFR of "
                    "the generated kinds, vs_baseline of imagenet_c and imagenet_p.")
flags.DEFINE_enum("corruption_table", "auto", ["auto", *corruptions.SEVERITY_TABLES],
                  "eval: corruption severities: CIFAR-10-C's (32 px) or ImageNet-C's (224 px); "
                  "auto picks by the model's input size (ImageNet-C's from 128 px).")
flags.DEFINE_string("corrupted_data", None, "eval: with --robustness=imagenet_c, ImageNet-C "
                    "as released (<corruption>/<severity 1-5>/<wnid>/<images>): top-1 error per "
                    "corruption and severity, CE and mCE over the 15 (AlexNet = 1; the 4 extra "
                    "beside), e.g. --robustness=imagenet_c --corrupted_data=ImageNet-C and the "
                    "checkpoint flags of --robustness. Without imagenet_c: a pre-made set of "
                    "--eval_data's classes in that layout (errors; mCE against "
                    "--robustness_baseline). Images are evaluated uncropped.")
flags.DEFINE_string("perturbed_data", None, "eval: with --robustness=imagenet_p, ImageNet-P as "
                    "released (<perturbation>/<wnid>/<image>.mp4, read with PyAV: pip install "
                    "'noisy-student-tf[video]'; or .npy frames): flip probability and top-5 "
                    "distance per perturbation, FR/mFR and T5D/mT5D over the 10 (AlexNet = 1; the "
                    "4 extra beside), e.g. --robustness=imagenet_p --perturbed_data=ImageNet-P and "
                    "the checkpoint flags of --robustness.")
flags.DEFINE_list("fgsm_epsilons", ["1", "2", "4", "8"], "eval: FGSM epsilons, 0-255 scale.")

# iterate.
flags.DEFINE_integer("iterations", 1, "iterate: teacher -> student rounds.", lower_bound=1)
flags.DEFINE_list("student_models", [], "iterate: student variant per round (default: --model "
                  "every round); each equal or larger than the last.")
flags.DEFINE_float("teacher_epochs", None, "iterate: teacher length (default --epochs).",
                   lower_bound=0)
# Per-round values: a comma-separated list, one entry per round (a single value: every round).
flags.DEFINE_list("student_image_sizes", [], "iterate: each round's student training size "
                  "(default: --image_size).")
flags.DEFINE_list("unlabeled_batch_ratios", [], "iterate: each round's pseudo-labeled rows per "
                  "labeled row (default: --unlabeled_batch_ratio).")
flags.DEFINE_list("student_epochs", [], "iterate: each round's student length in epochs of the "
                  "labeled data (default: --epochs).")
flags.DEFINE_list("student_train_steps", [], "iterate: each round's student length in steps "
                  "(instead of --student_epochs).")
flags.DEFINE_list("student_init", ["scratch"], "iterate: per round, train the student from "
                  "scratch (the paper) or start it from its teacher's weights (teacher).")
flags.DEFINE_list("finetune_image_size", [], "iterate: per round, a FixRes fine-tune of the "
                  "student at this size (none or 0: no fine-tune that round); the round is "
                  "evaluated at it and hands the fine-tuned model on as the next teacher.")
flags.DEFINE_list("finetune_steps", [], "iterate: each round's fine-tune length in steps.")
flags.DEFINE_list("finetune_epochs", [], "iterate: each round's fine-tune length in epochs of the "
                  "labeled data (instead of --finetune_steps; the paper's 1.5).")
flags.DEFINE_bool("teacher_noise", True, "iterate: train the first teacher with the noise flags "
                  "(off: no RandAugment, Cutout, dropout or stochastic depth for it; students stay "
                  "noised). Off suits small labeled sets, where noise makes the teacher underfit.")
flags.DEFINE_string("teacher_checkpoint", None, "iterate: start from this teacher instead of "
                    "training one (round 0 only evaluates it): a train workdir or .keras file, or "
                    "a tensorflow/tpu checkpoint with --checkpoint_format=reference and --model "
                    "naming its variant; loaded and seen as predict's --checkpoint.")


@flags.multi_flags_validator(["final_learning_rate", "base_learning_rate", "lr_decay_factor"])
def _check_final_learning_rate(values):
  if values["final_learning_rate"] is not None:
    try:
      schedules.check_final_learning_rate(values["base_learning_rate"],
                                          values["final_learning_rate"],
                                          values["lr_decay_factor"])
    except ValueError as e:
      raise flags.ValidationError(str(e)) from e
  return True


@flags.validator("robustness", message=f"--robustness takes {', '.join(ROBUSTNESS)}")
def _check_robustness(value):
  return all(v in ROBUSTNESS for v in value)


@flags.validator("student_models", message=f"--student_models takes {', '.join(spec.VARIANTS)}")
def _check_students(value):
  return all(v in spec.VARIANTS for v in value)


@flags.validator("fgsm_epsilons", message="--fgsm_epsilons takes non-negative numbers")
def _check_epsilons(value):
  try:
    return all(float(v) >= 0 for v in value)
  except ValueError:
    return False




def train_config(**overrides):
  """The TrainConfig of this command: every field from the flag of the same name (fields
  without a flag keep their defaults), then `overrides`."""
  values = {field.name: FLAGS[field.name].value for field in dataclasses.fields(train.TrainConfig)
            if field.name in FLAGS and field.name not in overrides}
  if "ema_decay" in values:
    values["ema_decay"] = FLAGS.ema_decay or None  # --ema_decay=0 turns the average off
  if "freeze_blocks" in values:
    values["freeze_blocks"] = _single("freeze_blocks", int)
  values.update(overrides)
  if values["epochs"] is None and values["train_steps"] is None:  # the rule is TrainConfig's
    raise app.UsageError("--epochs or --train_steps is needed: the run's length in passes "
                         "over the labeled data or in steps (a recipe sets one)")
  return train.TrainConfig(**values)


def _parsed(name, value, parse):
  try:
    return parse(value)
  except ValueError:
    raise app.UsageError(f"--{name}: {value!r} is not a valid value") from None


def _single(name, parse):
  """The one value of list flag `name` where the mode takes one (finetune's --freeze_blocks)."""
  values = FLAGS[name].value
  if len(values) != 1:
    raise app.UsageError(f"--{name} takes one value here, got {','.join(values)}")
  return _parsed(name, values[0], parse)


def per_round(name, rounds, parse, default):
  """List flag `name` as one parsed value per round: its entries, a single entry for every
  round, or `default` for every round when it is empty."""
  values = FLAGS[name].value
  if not values:
    return [default] * rounds
  if len(values) == 1:
    values = values * rounds
  if len(values) != rounds:
    raise app.UsageError(f"--{name} lists {len(values)} values for --iterations={rounds} (one "
                         "per round, or one for every round)")
  return [_parsed(name, value, parse) for value in values]


def _optional_size(value):
  return None if value.lower() in ("none", "0", "") else int(value)


def _inference_config(config_class, **overrides):
  """A PredictConfig or EvalConfig of this command: every field from the flag of the same name
  (not read for the `overrides`), its batch size from --inference_batch_size."""
  values = {field.name: FLAGS[field.name].value for field in dataclasses.fields(config_class)
            if field.name not in ("batch_size", *overrides)}
  return config_class(batch_size=FLAGS.inference_batch_size, **values, **overrides)


def predict_config(**overrides):
  return _inference_config(predict.PredictConfig, **overrides)


def eval_config():
  return _inference_config(evaluate.EvalConfig)


def filter_rule():
  """The FilterRule of this command (--balance off: no images_per_class)."""
  return filter_balance.FilterRule(
      threshold=FLAGS.confidence_threshold,
      images_per_class=FLAGS.images_per_class if FLAGS.balance else None,
      duplicate=FLAGS.duplicate_to_balance, seed=FLAGS.seed)


def _strategy():
  return distribute.build_strategy(FLAGS.strategy, FLAGS.tpu)


def _print(result):
  """The command's summary: one JSON line on stdout (progress and logs go to stderr)."""
  print(json.dumps(result, default=str), flush=True)


def run_convert():
  if not FLAGS.output:
    raise app.UsageError("convert needs --output")
  written = convert.convert(FLAGS.source, FLAGS.input, FLAGS.output, split=FLAGS.split,
                            num_shards=FLAGS.num_shards, unlabeled=FLAGS.unlabeled,
                            seed=FLAGS.seed, limit=FLAGS.limit,
                            class_names=FLAGS.class_names)
  result = {"output": FLAGS.output,
            "splits": {k: v["num_examples"] for k, v in written["splits"].items()}}
  if FLAGS.labeled_per_class or FLAGS.validation_per_class:
    result["semi_supervised"] = subsets.split_labeled(
        FLAGS.output, FLAGS.output, per_class=FLAGS.labeled_per_class, seed=FLAGS.seed,
        num_shards=FLAGS.num_shards, validation_per_class=FLAGS.validation_per_class)
  _print(result)


def finetune_config():
  """FixRes fine-tuning (`train.finetune_config`) of --init_checkpoint: when it is a train run
  of ours, at the learning rate of the last --train_steps (or --epochs) steps of that run's
  schedule; otherwise the flags' own schedule from step 0."""
  if not FLAGS.init_checkpoint:
    raise app.UsageError("finetune needs --init_checkpoint (the run to fine-tune)")
  run = (checkpoints.load_run_config(FLAGS.init_checkpoint)
         if FLAGS.checkpoint_format == "keras" else None)
  # Labeled images only: the student flags of a shared recipe are not read.
  labeled_only = {"unlabeled_batch_ratio": 0.0, "pseudo_labels": "soft", "temperature": 1.0}
  return train.finetune_config(train_config(**labeled_only), run, noise=FLAGS.finetune_noise)


def _report_plan(plan):
  """--dry_run: the plan for people on stderr, as JSON in --output (written atomically) and as
  the command's one JSON line on stdout."""
  for line in plan["lines"]:
    print(line, file=sys.stderr)
  if FLAGS.output:
    from data import records  # pylint: disable=g-import-not-at-top
    records.write_text_atomically(FLAGS.output, json.dumps(plan, indent=1, default=str) + "\n")
  _print({"dry_run": True, **{k: v for k, v in plan.items() if k != "lines"}})


def _need_workdir():
  if not FLAGS.workdir:
    raise app.UsageError(f"--mode={FLAGS.mode} needs --workdir (where the run writes)")


def _check_output_is_for_dry_run():
  if FLAGS.output and not FLAGS.dry_run:
    raise app.UsageError(f"--output with --mode={FLAGS.mode} is where --dry_run writes its plan; "
                         "a run writes into --workdir")


def run_train(finetune=False):
  config = finetune_config() if finetune else train_config()
  _need_workdir()
  _check_output_is_for_dry_run()
  # FixRes fine-tuning trains on labeled images only, whatever a shared recipe says.
  pseudo = None if finetune else FLAGS.pseudo_labeled_data
  args = dict(pseudo_labeled_data=pseudo, eval_data=FLAGS.eval_data,
              validation_data=FLAGS.validation_data, init_checkpoint=FLAGS.init_checkpoint,
              init_checkpoint_format=FLAGS.checkpoint_format, strategy=_strategy(),
              overwrite=FLAGS.overwrite, role="finetune" if finetune else None)
  if FLAGS.dry_run:
    _report_plan(train.dry_run(config, FLAGS.labeled_data, FLAGS.workdir, **args))
    return
  result = train.train(config, FLAGS.labeled_data, FLAGS.workdir, eval_config=eval_config(),
                       **args)
  _print({"workdir": FLAGS.workdir, "total_steps": result["total_steps"],
          "finished_before": result.get("finished_before", False),
          "eval": result.get("eval", {}).get("top1"),
          "validation": result.get("eval", {}).get("validation", {}).get("top1")})


def _model_args():
  """build_model arguments for --checkpoint_format=reference (the variant's own resolution:
  --image_size may be a student's)."""
  return dict(variant=FLAGS.model, image_size=FLAGS.inference_image_size,
              small_image=FLAGS.small_image, width_coefficient=FLAGS.width_coefficient,
              depth_coefficient=FLAGS.depth_coefficient)


def _model_for(checkpoint, num_classes=None, strategy=None):
  if not checkpoint:
    raise app.UsageError("--checkpoint is needed")
  return checkpoints.load_model(checkpoint, checkpoint_format=FLAGS.checkpoint_format,
                                model_args=_model_args(), num_classes=num_classes,
                                mixed_precision=FLAGS.mixed_precision, strategy=strategy)


def _preprocess_for(checkpoint, model=None):
  """How `checkpoint` (loaded as `model`) sees images (checkpoints.eval_preprocessing): its own
  run's size and normalisation, or those of the model as built; --inference_image_size
  overrides the size, --image_size does not (it is the model being trained's). Without `model`
  the checkpoint is loaded only when it has no run of its own to read."""
  if model is None and (FLAGS.checkpoint_format != "keras"
                        or checkpoints.load_run_config(checkpoint) is None):
    model = _model_for(checkpoint, FLAGS.num_classes)
  return checkpoints.eval_preprocessing(
      checkpoint, model, checkpoint_format=FLAGS.checkpoint_format, pad_crop=FLAGS.pad_crop,
      normalization=FLAGS.normalization, image_size=FLAGS.inference_image_size)


def run_predict():
  if not FLAGS.output:
    raise app.UsageError("predict needs --output")
  config, strategy = predict_config(), _strategy()
  model = _model_for(FLAGS.checkpoint, FLAGS.num_classes, strategy)
  # Recorded for the filter's reports only when known: --class_names, or the teacher's run's.
  names = FLAGS.class_names or checkpoints.known_class_names(
      FLAGS.checkpoint, checkpoints.model_classes(model), checkpoint_format=FLAGS.checkpoint_format)
  summary = predict.predict_phase(model, FLAGS.unlabeled_data, FLAGS.output,
                                  _preprocess_for(FLAGS.checkpoint, model), config,
                                  strategy=strategy, class_names=names)
  shown = {k: summary[k] for k in ("images", "images_per_second")}
  if FLAGS.predictions_format != "tfrecord":
    from noisy_student.phases import prediction_table  # pylint: disable=g-import-not-at-top
    shown["table"] = prediction_table.save_prediction_table(
        FLAGS.output, summary, FLAGS.predictions_format, _class_names(FLAGS.checkpoint, model))
  _print(shown)


def _class_names(checkpoint, model):
  """--class_names, else those of `checkpoint`'s run (checkpoints.load_class_names)."""
  from noisy_student import checkpoints  # pylint: disable=g-import-not-at-top,redefined-outer-name
  return FLAGS.class_names or checkpoints.load_class_names(
      checkpoint, checkpoints.model_classes(model), checkpoint_format=FLAGS.checkpoint_format)


def run_export():
  from noisy_student.phases import export  # pylint: disable=g-import-not-at-top
  if not FLAGS.output:
    raise app.UsageError("export needs --output")
  model = _model_for(FLAGS.checkpoint, FLAGS.num_classes)
  _print(export.export_phase(model, _preprocess_for(FLAGS.checkpoint, model), FLAGS.output,
                             _class_names(FLAGS.checkpoint, model)))


def run_filter():
  filter_balance.return_freed_memory_promptly()  # memory bounded by what is kept
  if not (FLAGS.predictions and FLAGS.output):
    raise app.UsageError("filter needs --predictions and --output")
  stats = filter_phase.filter_and_balance_phase(
      FLAGS.predictions, FLAGS.unlabeled_data, FLAGS.output, filter_rule(),
      num_shards=FLAGS.num_shards, num_classes=FLAGS.num_classes)
  _print({k: v for k, v in stats.items() if not isinstance(v, (list, dict))})


def run_beam():
  from noisy_student.phases import beam_pipeline  # pylint: disable=g-import-not-at-top
  if not (FLAGS.checkpoint and FLAGS.output):
    raise app.UsageError("beam needs --checkpoint and --output")
  result = beam_pipeline.run_beam(
      FLAGS.checkpoint, FLAGS.unlabeled_data, FLAGS.output, _preprocess_for(FLAGS.checkpoint),
      predict_config(num_workers=1, worker_index=0), filter_rule(),
      num_shards=FLAGS.num_shards, checkpoint_format=FLAGS.checkpoint_format,
      model_args=_model_args(), num_classes=FLAGS.num_classes, beam_options=FLAGS.beam_options)
  _print({"images": result["predict"]["images"],
          **{k: v for k, v in result["filter"].items() if not isinstance(v, (list, dict))}})


def _manifest_classes(data):
  if FLAGS.num_classes:
    return FLAGS.num_classes
  found = manifest.load_manifest(data)  # None for a glob; gs:// directories too
  return (found or {}).get("num_classes") or None


def run_eval():
  config, strategy = eval_config(), _strategy()
  robustness.check_inputs(FLAGS.robustness, eval_data=FLAGS.eval_data,
                          corrupted_data=FLAGS.corrupted_data, perturbed_data=FLAGS.perturbed_data)
  # With --robustness=imagenet_a, --eval_data is ImageNet-A's folders: no split to score as usual.
  clean = robustness.clean_eval_data(FLAGS.robustness, FLAGS.eval_data)
  model = _model_for(FLAGS.checkpoint, _manifest_classes(clean) if clean else FLAGS.num_classes,
                     strategy)
  prep = _preprocess_for(FLAGS.checkpoint, model)
  output = FLAGS.output or FLAGS.workdir
  if not output:
    raise app.UsageError("eval needs --output (or --workdir): where metrics.json goes")
  # None for a glob, or a manifest without names for the model's classes.
  class_names = manifest.class_names_for(clean, model.output_shape[-1]) if clean else None

  def robustness_results(metrics):
    if not (FLAGS.robustness or FLAGS.corrupted_data):
      return {}
    # The pre-made set's labels follow the clean eval set's class names when it has them; an
    # ImageNet model's clean error gives ImageNet-C's relative mCE.
    clean_error = (1 - metrics["top1"] if metrics and model.output_shape[-1] ==
                   robustness.IMAGENET_CLASSES else None)
    return {"robustness": robustness.robustness_phase(
        model, FLAGS.eval_data, prep, output, FLAGS.robustness,
        baseline=FLAGS.robustness_baseline, epsilons=[float(e) for e in FLAGS.fgsm_epsilons],
        batch_size=FLAGS.inference_batch_size, seed=FLAGS.seed, table=FLAGS.corruption_table,
        corrupted_data=FLAGS.corrupted_data, perturbed_data=FLAGS.perturbed_data,
        class_names=class_names, clean_error=clean_error, strategy=strategy,
        jit_compile=distribute.jit_compile(config.jit_compile, strategy))}

  shown = {}
  if clean:
    # Robustness goes into metrics.json too, so that a metrics.json can serve as a baseline.
    metrics = evaluate.eval_phase(model, prep, output, eval_data=clean,
                                  validation_data=FLAGS.validation_data, config=config,
                                  strategy=strategy, class_names=class_names,
                                  extra=robustness_results)
    shown = {k: metrics[k] for k in ("top1", "top5", "loss", "num_examples")}
    if "validation" in metrics:
      shown["validation_top1"] = metrics["validation"]["top1"]
  else:
    metrics = robustness_results(None)
  shown.update(robustness.headline(metrics.get("robustness", {})))
  _print(shown)


def iterate_rounds(teacher):
  """One iterate.Round per round from the per-round flags: each student is the teacher's config
  (before --noteacher_noise) with the round's model, size, ratio and length, and an optional
  FixRes fine-tune."""
  rounds = FLAGS.iterations
  if FLAGS.student_models and len(FLAGS.student_models) not in (1, rounds):
    raise app.UsageError(f"--student_models lists {len(FLAGS.student_models)} models for "
                         f"--iterations={rounds}")
  models = per_round("student_models", rounds, str, teacher.model)
  sizes = per_round("student_image_sizes", rounds, int, teacher.image_size)
  ratios = per_round("unlabeled_batch_ratios", rounds, float, teacher.unlabeled_batch_ratio)
  epochs = per_round("student_epochs", rounds, float, None)
  steps = per_round("student_train_steps", rounds, int, None)
  inits = per_round("student_init", rounds, str, "scratch")
  tune_sizes = per_round("finetune_image_size", rounds, _optional_size, None)
  tune_steps = per_round("finetune_steps", rounds, int, None)
  tune_epochs = per_round("finetune_epochs", rounds, float, None)
  frozen = per_round("freeze_blocks", rounds, int, 0)
  found = []
  for k in range(rounds):
    if epochs[k] is not None and steps[k] is not None:
      raise app.UsageError(f"round {k + 1}: give --student_epochs or --student_train_steps, "
                           "not both")
    length = ({"epochs": epochs[k], "train_steps": None} if epochs[k] is not None else
              {"epochs": None, "train_steps": steps[k]} if steps[k] is not None else {})
    student = dataclasses.replace(teacher, model=models[k], image_size=sizes[k],
                                  unlabeled_batch_ratio=ratios[k], **length)
    finetune = None
    if tune_sizes[k] is not None:
      if (tune_steps[k] is None) == (tune_epochs[k] is None):
        raise app.UsageError(f"round {k + 1} fine-tunes at {tune_sizes[k]}: give exactly one of "
                             "--finetune_steps and --finetune_epochs for it")
      finetune = dataclasses.replace(student, image_size=tune_sizes[k],
                                     train_steps=tune_steps[k], epochs=tune_epochs[k],
                                     freeze_blocks=frozen[k])
    found.append(iterate.Round(student, init=inits[k], finetune=finetune,
                               finetune_noise=FLAGS.finetune_noise))
  return found


def run_iterate():
  # The teacher freezes nothing: --freeze_blocks is each round's fine-tune's.
  teacher = (train_config(epochs=FLAGS.teacher_epochs, train_steps=None, freeze_blocks=0)
             if FLAGS.teacher_epochs else train_config(freeze_blocks=0))
  rounds = iterate_rounds(teacher)
  _need_workdir()
  _check_output_is_for_dry_run()
  if not FLAGS.teacher_noise:
    # The students were made from the noised config; only the first teacher loses its noise.
    teacher = dataclasses.replace(teacher, **NO_NOISE)
  given = None
  if FLAGS.teacher_checkpoint:  # it must have the labeled data's classes
    given = iterate.Teacher(
        FLAGS.teacher_checkpoint, FLAGS.checkpoint_format,
        model_args=_model_args() if FLAGS.checkpoint_format == "reference" else None,
        num_classes=_manifest_classes(FLAGS.labeled_data), pad_crop=FLAGS.pad_crop,
        normalization=FLAGS.normalization, image_size=FLAGS.inference_image_size)
  args = dict(labeled_data=FLAGS.labeled_data, unlabeled_data=FLAGS.unlabeled_data,
              eval_data=FLAGS.eval_data, validation_data=FLAGS.validation_data,
              # The workers' split of the predictions is iterate's own.
              predict_config=predict_config(num_workers=1, worker_index=0),
              filter_rule=filter_rule(), strategy=_strategy(),
              teacher_checkpoint=given)
  if FLAGS.dry_run:
    _report_plan(iterate.plan_iterate(teacher, rounds, FLAGS.workdir, **args))
    return
  summary = iterate.iterate(teacher, rounds, FLAGS.workdir, eval_config=eval_config(), **args)
  print("\n".join(summary["table"]), file=sys.stderr)
  _print({"workdir": FLAGS.workdir, "rounds": summary["rounds"]})


# Which modes read each flag. A flag given on the command line to a mode that does not read it
# is an error naming the modes that do (a mistyped mode, or a flag put on the wrong command,
# would otherwise be ignored in silence). Recipe files may set flags for several modes: one
# recipe serves a teacher's train, its predict and its iterate.
_TRAINING = ("train", "finetune", "iterate")
_LOADING = ("predict", "eval", "beam", "export")  # load --checkpoint
_MODEL = (*_TRAINING, *_LOADING)
READ_BY = {
    "mode": MODES,
    "seed": ("convert", *_TRAINING, "filter", "eval", "beam"),  # predict and export draw nothing
    "workdir": (*_TRAINING, "eval"),
    "model small_image width_coefficient depth_coefficient pad_crop normalization": _MODEL,
    "image_size batch_size": _TRAINING,
    "num_classes": (*_MODEL, "filter"),
    "strategy tpu": ("train", "finetune", "iterate", "predict", "eval"),
    "mixed_precision": (*_MODEL,),  # export: a bfloat16 SavedModel, for TPU serving
    "jit_compile": (*_TRAINING, "predict", "eval", "beam"),
    "inference_batch_size": ("predict", "eval", "beam", *_TRAINING),
    "dry_run": _TRAINING,
    "overwrite": ("train", "finetune"),
    "labeled_data": _TRAINING,
    "unlabeled_data": ("predict", "filter", "beam", "iterate"),
    "eval_data validation_data": (*_TRAINING, "eval"),
    "pseudo_labeled_data": ("train",),
    "init_checkpoint": ("train", "finetune"),
    "source input split unlabeled limit labeled_per_class validation_per_class": ("convert",),
    "output": ("convert", "predict", "filter", "beam", "eval", "export", *_TRAINING),
    "num_shards": ("convert", "filter", "beam"),
    "class_names": ("convert", "predict", "export"),
    "epochs train_steps randaugment_layers randaugment_magnitude cutout flip dropout_rate "
    "survival_prob base_learning_rate final_learning_rate warmup_epochs lr_decay_epochs "
    "lr_decay_factor weight_decay label_smoothing ema_decay batch_norm_recalibration "
    "batch_norm_recalibration_images eval_every_keras_epochs": _TRAINING,
    "unlabeled_batch_ratio pseudo_labels temperature": ("train", "iterate"),
    "freeze_blocks": _TRAINING,
    "finetune_noise": ("finetune", "iterate"),
    "checkpoint": _LOADING,
    "inference_image_size": (*_LOADING, "iterate"),
    "checkpoint_format": (*_LOADING, "train", "finetune", "iterate"),
    "top_k": ("predict", "beam", "iterate"),
    "num_workers worker_index predictions_format": ("predict",),
    "predictions": ("filter",),
    "confidence_threshold images_per_class balance duplicate_to_balance": ("filter", "beam",
                                                                            "iterate"),
    "beam_options": ("beam",),
    "robustness robustness_baseline corruption_table corrupted_data perturbed_data "
    "fgsm_epsilons": ("eval",),
    "iterations student_models teacher_epochs student_epochs student_init teacher_noise "
    "teacher_checkpoint student_image_sizes unlabeled_batch_ratios student_train_steps "
    "finetune_image_size finetune_steps finetune_epochs": ("iterate",),
}
FLAG_MODES = {name: modes for names, modes in READ_BY.items() for name in names.split()}

# --help and flags.md: the modes, and the flags in these sections (each flag in one), both
# written by `help_text` / `flags_markdown` from the flag definitions and READ_BY.
MODE_SUMMARIES = {
    "convert": "images (folders, IDX, SVHN .mat, .npz, TFDS) -> TFRecord shards + manifest.json",
    "train": "a teacher on --labeled_data, or a student with --pseudo_labeled_data",
    "finetune": "FixRes: --init_checkpoint at a larger --image_size, first blocks frozen",
    "predict": "a teacher's (soft) pseudo labels for --unlabeled_data",
    "filter": "confidence threshold and class balancing of predictions -> a student's shards",
    "eval": "top-1/top-5, calibration, confusion matrix; --robustness sets",
    "iterate": "teacher -> (predict -> filter -> student [-> fine-tune] -> eval) x rounds",
    "beam": "predict + filter as one Apache Beam pipeline",
    "export": "a self-contained SavedModel and serving.keras",
}
FLAG_GROUPS = (
    ("Common", "mode workdir model image_size small_image pad_crop width_coefficient "
     "depth_coefficient num_classes seed strategy tpu mixed_precision jit_compile batch_size "
     "inference_batch_size normalization dry_run overwrite"),
    ("Data (train, finetune, predict, filter, eval, iterate)",
     "labeled_data unlabeled_data eval_data validation_data pseudo_labeled_data"),
    ("convert", "source input output split num_shards unlabeled limit class_names "
     "labeled_per_class validation_per_class"),
    ("train and finetune (also iterate)",
     "epochs train_steps unlabeled_batch_ratio pseudo_labels temperature init_checkpoint "
     "randaugment_layers randaugment_magnitude cutout flip dropout_rate survival_prob "
     "base_learning_rate final_learning_rate warmup_epochs lr_decay_epochs lr_decay_factor "
     "weight_decay label_smoothing ema_decay batch_norm_recalibration "
     "batch_norm_recalibration_images eval_every_keras_epochs freeze_blocks finetune_noise"),
    ("predict, eval and export (also beam)",
     "checkpoint checkpoint_format inference_image_size top_k num_workers worker_index "
     "predictions_format"),
    ("filter (also iterate, beam)",
     "predictions confidence_threshold images_per_class balance duplicate_to_balance"),
    ("beam: predict + filter as one Apache Beam pipeline", "beam_options"),
    ("eval: robustness",
     "robustness robustness_baseline fgsm_epsilons corruption_table corrupted_data "
     "perturbed_data"),
    ("iterate (per-round flags: a comma-separated list, one entry per round; one value: every "
     "round)", "iterations student_models student_image_sizes unlabeled_batch_ratios "
     "teacher_epochs student_epochs student_train_steps student_init finetune_image_size "
     "finetune_steps finetune_epochs teacher_noise teacher_checkpoint"),
)


def documented_flags():
  """[(section title, [absl Flag, ...])] of every flag main.py defines, each in one section."""
  defined = {f.name: f for f in FLAGS.get_flags_for_module(sys.modules[__name__])}
  listed = [name for _, names in FLAG_GROUPS for name in names.split()]
  missing, extra = set(defined) - set(listed), set(listed) - set(defined)
  if missing or extra:
    raise AssertionError(f"update FLAG_GROUPS: undocumented {sorted(missing)}, unknown "
                         f"{sorted(extra)}")
  return [(title, [defined[name] for name in names.split()]) for title, names in FLAG_GROUPS]


def _flag_kind(flag):
  values = getattr(flag.parser, "enum_values", None)
  if values:
    return "variant name" if flag.name == "model" else "one of " + ", ".join(values)
  return flag.flag_type()


def _flag_default(flag):
  default = flag.default
  if isinstance(default, list):
    return ",".join(default) or "(empty)"
  return default


def _flag_meaning(flag):
  return flag.help.split(": ", 1)[1] if flag.help.startswith("<") else flag.help


def help_text(mode=None):
  """What --help prints: the modes and every flag by section, or with --mode=MODE that mode's
  flags only (those it reads: READ_BY)."""
  import textwrap  # pylint: disable=g-import-not-at-top
  command = quiet_start.command_name()
  lines = [f"usage: {command} --mode=MODE [flags]   (or --flagfile=recipes/NAME.flags)", ""]
  if mode is None:
    lines += ["modes:", *[f"  {name:<9} {text}" for name, text in MODE_SUMMARIES.items()], "",
              f"{command} --help --mode=MODE lists one mode's flags; flags.md has them all.", ""]
  else:
    lines += [f"--mode={mode}: {MODE_SUMMARIES[mode]}", ""]
  for title, group in documented_flags():
    shown = [f for f in group if mode is None or mode in FLAG_MODES[f.name]]
    if not shown:
      continue
    lines.append(f"{title}:")
    for flag in shown:
      lines.append(f"  --{flag.name} ({_flag_kind(flag)}; default {_flag_default(flag)})")
      lines += textwrap.wrap(_flag_meaning(flag), 96, initial_indent="      ",
                             subsequent_indent="      ")
    lines.append("")
  return "\n".join(lines)


FLAGS_MD_HEADER = """# Flags of main.py

`python main.py --mode=MODE [flags]` (installed: `noisy-student`), or
`--flagfile=recipes/NAME.flags` for a recipe (later flags override the file's). Flags are checked
when parsed: an unknown flag, a value outside its range or enum, or a bad combination fails
before anything runs. A flag given on the command line to a mode that does not read it (last
column) is an error naming the modes that do; a recipe may set flags for several modes.
`--help` prints the same, and `--help --mode=MODE` one mode's flags. This file is written by
`python scripts/flags_md.py > flags.md` from main.py; a test fails when they disagree.
"""


def flags_markdown():
  """flags.md: every flag by section, with its type, default, meaning and the modes reading it."""
  out = [FLAGS_MD_HEADER]
  for title, group in documented_flags():
    out.append(f"## {title}\n\n| flag | type | default | meaning | read by modes |\n"
               "|---|---|---|---|---|")
    for flag in group:
      out.append(f"| `--{flag.name}` | {_flag_kind(flag)} | `{_flag_default(flag)}` | "
                 f"{_flag_meaning(flag).replace('|', '/')} | {', '.join(FLAG_MODES[flag.name])} |")
    out.append("")
  return "\n".join(out) + "\n"


def _asked_for_help(argv):
  """(asked, mode) for --help / -h / --helpshort on the command line (before a bare --), the
  mode from --mode=X or --mode X when given."""
  asked, mode = False, None
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  for i, arg in enumerate(args):
    if arg in ("--help", "-help", "-h", "--helpshort", "-?"):
      asked = True
    elif arg.startswith(("--mode=", "-mode=")):
      mode = arg.split("=", 1)[1]
    elif arg in ("--mode", "-mode") and i + 1 < len(args):
      mode = args[i + 1]
  return asked, mode


def command_line_flags(argv):
  """The names of the flags `argv` sets itself (not through --flagfile)."""
  names = []
  for arg in argv[1:]:
    if arg == "--":
      break
    if not arg.startswith("-"):
      continue
    name = arg.lstrip("-").split("=", 1)[0]
    if name not in FLAGS and name.startswith("no") and name[2:] in FLAGS:
      name = name[2:]  # --noflag
    if name in FLAG_MODES:
      names.append(name)
  return names


def check_flags_read(mode, names):
  """Raises app.UsageError for each of `names` that `mode` does not read."""
  unread = [name for name in names if mode not in FLAG_MODES[name]]
  if unread:
    raise app.UsageError("; ".join(
        f"--{name} is not read by --mode={mode} (it is read by --mode="
        f"{'|'.join(FLAG_MODES[name])})" for name in unread))


_COMMAND_LINE = []  # set by parse_flags: the flags the command line itself gave


def parse_flags(argv):
  """app.run's flag parser: absl's, remembering which flags the command line itself set; --help
  (with --mode=MODE: that mode's flags) prints `help_text` and exits 0, through both entry
  points (absl's own help printed only a usage line for the installed command)."""
  asked, mode = _asked_for_help(argv)
  if asked:
    if mode is not None and mode not in MODES:
      raise SystemExit(f"{quiet_start.command_name()}: --mode={mode} is not a mode; modes: "
                       f"{', '.join(MODES)}")
    print(help_text(mode))
    raise SystemExit(0)
  remaining = app.parse_flags_with_usage(argv)
  _COMMAND_LINE[:] = command_line_flags(argv)
  return remaining


# Each mode's main input: needed, and checked before any work.
_MAIN_INPUT = {"convert": "input", "train": "labeled_data", "finetune": "labeled_data",
               "iterate": "labeled_data", "predict": "unlabeled_data", "filter": "unlabeled_data",
               "beam": "unlabeled_data", "eval": "eval_data"}


def check_main_input():
  """Before any work: a mode's main input is given (no data flag has a default), and when it is
  the demo's data set, not made yet, the error says how to make it (a fresh clone's
  `python main.py` failed on a missing manifest). Anything else missing is reported by the
  phase, naming its flag."""
  name = _MAIN_INPUT.get(FLAGS.mode)
  if name == "eval_data" and not robustness.needs_eval_data(FLAGS.robustness):
    name = None  # imagenet_c and imagenet_p alone read --corrupted_data and --perturbed_data
  value = FLAGS[name].value if name else None
  if name and not value:
    raise app.UsageError(
        f"--mode={FLAGS.mode} needs --{name}: " + (
            "the images to convert" if name == "input" else
            "a directory written by --mode=convert, or a glob of its shards (README, 'Your own "
            "images'; a recipe, e.g. recipes/fashion_mnist_demo.flags, names its own)"))
  default_data = os.path.normpath(DEFAULT_DATA) + os.sep
  if value and (os.path.normpath(value) + os.sep).startswith(default_data) and not glob.glob(value):
    raise ValueError(
        f"--{name}={value} does not exist. It is part of the default data set, which "
        f"`bash scripts/demo.sh` converts from Fashion-MNIST into {DEFAULT_DATA} (and then "
        f"runs the demo); for other data, --mode=convert and --{name} (README, 'Modes').")


_MODES = {"convert": run_convert, "train": run_train, "finetune": lambda: run_train(True),
          "predict": run_predict, "filter": run_filter, "eval": run_eval,
          "iterate": run_iterate, "beam": run_beam, "export": run_export}


def main(argv):
  std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
  try:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_flags_read(FLAGS.mode, _COMMAND_LINE)
    check_main_input()
    _MODES[FLAGS.mode]()
  except (ValueError, FileNotFoundError, app.UsageError) as e:
    # Bad input (a path, a flag value, a checkpoint that does not fit, a missing flag): one
    # clear line, no traceback and no page of help. NS_TRACEBACK=1 shows where it came from.
    if os.environ.get("NS_TRACEBACK"):
      raise
    raise SystemExit(f"{quiet_start.command_name()} --mode={FLAGS.mode}: error: {e}") from None


def find_flag_files_in_project():
  """A --flagfile path not found from the working directory is looked up in the project's
  directory (HOME), also inside flag files: `--flagfile=recipes/NAME.flags` works from any
  directory, from a clone and installed, and recipes include each other by such paths."""
  read = FLAGS._get_flag_file_lines  # pylint: disable=protected-access  (absl opens them there)

  def read_from_project(filename, parsed_file_stack=None):
    if filename and not os.path.isabs(filename) and not os.path.exists(filename):
      if os.path.exists(os.path.join(HOME, filename)):
        filename = os.path.join(HOME, filename)
    return read(filename, parsed_file_stack=parsed_file_stack)

  FLAGS.__dict__["_get_flag_file_lines"] = read_from_project  # FlagValues' own setattr sets flags


def run():
  """`python main.py`, and the `noisy-student` command of `pip install .`."""
  find_flag_files_in_project()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
