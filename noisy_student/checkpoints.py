"""Finding and loading the model a phase should use: one restore path for predict, eval, train."""

import json
import logging
import os

import keras
import tensorflow as tf

import efficientnet
from data import manifest
from data import preprocess
from noisy_student import distribute

FORMATS = ("keras", "reference")  # --checkpoint_format
FINAL_MODEL = "model.keras"      # a train run's final model, EMA weights
RUN_CONFIG = "train_config.json"  # what a train run was asked to do


def resolve_model_file(checkpoint):
  """`checkpoint` is a train run's workdir (its final EMA model) or a `.keras` file."""
  if tf.io.gfile.isdir(checkpoint):
    path = os.path.join(checkpoint, FINAL_MODEL)
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(
          f"--checkpoint {checkpoint!r} is a directory without {FINAL_MODEL}: not a finished "
          "train run (an interrupted one resumes when its train command is run again)")
    return path
  if not tf.io.gfile.exists(checkpoint):
    raise FileNotFoundError(f"--checkpoint {checkpoint!r} does not exist")
  if not checkpoint.endswith(".keras"):
    raise ValueError(f"--checkpoint {checkpoint!r} is neither a train workdir nor a .keras file; "
                     "for a tensorflow/tpu TF1 checkpoint pass --checkpoint_format=reference")
  return checkpoint


def load_model(checkpoint, *, checkpoint_format="keras", model_args=None, num_classes=None,
               mixed_precision="none", strategy=None):
  """Loads the model to run, computing in `mixed_precision`'s dtype, under `strategy`'s scope
  (default: the current strategy).

  Args:
    checkpoint: see `resolve_model_file`; for checkpoint_format="reference", a TF1 checkpoint
      prefix or directory of tensorflow/tpu's EfficientNet (the released Noisy Student ones).
    checkpoint_format: "keras" or "reference".
    model_args: build_model keyword arguments (variant, image_size, ...) for "reference".
    num_classes: when given, the loaded model must have exactly this many classes (a reference
      checkpoint's model is built with its classifier's count otherwise).
    mixed_precision: "none", "bfloat16" or "float16" (distribute.PRECISION_POLICIES); weights
      and logits stay float32.
    strategy: the tf.distribute strategy whose replicas will run the model (for a multi-worker
      one, this worker's devices: `distribute.inference_strategy`).
  """
  if checkpoint_format not in FORMATS:
    raise ValueError(f"checkpoint_format must be one of {FORMATS}, got {checkpoint_format!r}")
  strategy = distribute.inference_strategy(strategy)
  # An EfficientNet .keras file is rebuilt from its builder arguments (EfficientNet.from_config),
  # so its layers take the policy in force while it loads.
  with distribute.precision(mixed_precision), strategy.scope():
    if checkpoint_format == "reference":
      args = dict(model_args or {})
      variant = args.pop("variant")
      model = efficientnet.build_model(
          variant, num_classes or efficientnet.checkpoint_classes(checkpoint, variant), **args)
      efficientnet.load_reference_checkpoint(model, checkpoint, use_ema=True)
    else:
      model = keras.models.load_model(resolve_model_file(checkpoint), compile=False)
  check_classes(model, num_classes, checkpoint)
  return model


def model_classes(model):
  return int(model.output.shape[-1])


def check_classes(model, num_classes, checkpoint):
  if num_classes is not None and model_classes(model) != num_classes:
    raise ValueError(f"checkpoint {checkpoint!r} has {model_classes(model)} classes but the data "
                     f"has {num_classes}")


def load_run_config(checkpoint):
  """The train_config.json beside a train run's model, or None."""
  directory = checkpoint if tf.io.gfile.isdir(checkpoint) else os.path.dirname(checkpoint)
  path = os.path.join(directory, RUN_CONFIG)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def known_class_names(checkpoint, num_classes, *, checkpoint_format="keras"):
  """The names of a checkpoint's `num_classes` classes from its train run's labeled data (the
  manifest that train_config.json's labeled_data points to), or None when they are not known
  (no run, the manifest gone or naming another number of classes)."""
  run = load_run_config(checkpoint) if checkpoint_format == "keras" else None
  return manifest.class_names_for(run["labeled_data"], num_classes) if run else None


def load_class_names(checkpoint, num_classes, *, checkpoint_format="keras"):
  """`known_class_names`, else the label numbers "0", "1", ..."""
  names = known_class_names(checkpoint, num_classes, checkpoint_format=checkpoint_format)
  return names or [str(label) for label in range(num_classes)]


def eval_preprocessing(checkpoint, model=None, *, checkpoint_format="keras", pad_crop=None,
                       normalization="imagenet", image_size=None):
  """How a checkpoint sees images: the one answer for predict, eval, beam and iterate.

  A train run of ours is seen as it was trained: its own image size, small-image preprocessing
  and mean/std from its train_config.json, whatever the flags of the command that loads it say
  (a student's recipe must not change the size its teacher predicts at). Otherwise (a .keras
  file without its run, a reference checkpoint) the loaded `model` decides the size and
  small-image preprocessing (`EfficientNet.image_size`: the size it was built for, else its
  variant's, 32 for the small-image model), `pad_crop` may override the latter, and
  `normalization` names the mean/std ("imagenet", "svhn"). A reference checkpoint was trained on
  ImageNet: "manifest" (nothing to read) means "imagenet" for it; for a .keras file without its
  run it is an error, since a guess would evaluate a model on images it was never trained to see.
  `image_size`, when given, overrides the size in both cases (--inference_image_size).
  """
  run = load_run_config(checkpoint) if checkpoint_format == "keras" else None
  if run is not None:
    config = run["config"]
    small = config["small_image"] if config.get("pad_crop") is None else config["pad_crop"]
    size, mean, std = run["image_size"], run["mean"], run["std"]
  else:
    if model is None:
      raise ValueError(f"{checkpoint!r} has no {RUN_CONFIG}: its model is needed to see its size")
    if normalization == "manifest" and checkpoint_format == "keras":
      raise ValueError(
          f"--checkpoint {checkpoint!r} has no {RUN_CONFIG} beside it, so the mean/std its "
          "images were normalised with is unknown: keep the model in its train run's workdir, "
          "or name the normalisation (--normalization=imagenet or svhn)")
    built_small = bool(model.efficientnet_config["small_image"])
    small = built_small if pad_crop is None else pad_crop
    size = model.image_size
    mean, std = preprocess.NORMALIZATIONS["imagenet" if normalization == "manifest"
                                          else normalization]
  return preprocess.PreprocessConfig(image_size=image_size or size, small_image=small,
                                     mean=tuple(mean), std=tuple(std))


def save_model_atomically(model, path):
  """Saves the architecture and weights only (no optimizer state) as a .keras file.

  Keras writes .keras files in place; a temporary sibling then a rename keeps half-written
  models from ever carrying the final name.
  """
  bare = type(model).from_config(model.get_config())
  bare.set_weights(model.get_weights())
  directory, name = os.path.split(path)
  tmp = os.path.join(directory, f".tmp-{name}")
  bare.save(tmp)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def warm_start(model, checkpoint, checkpoint_format="keras"):
  """Copies every layer's weights whose name and shapes match from `checkpoint` into `model`."""
  if checkpoint_format == "reference":
    return efficientnet.load_reference_checkpoint(model, checkpoint, include_top=False)
  source = load_model(checkpoint)
  copied, skipped = 0, []
  source_layers = {layer.name: layer for layer in source.layers}
  for layer in model.layers:
    other = source_layers.get(layer.name)
    if not layer.weights or other is None:
      continue
    values = other.get_weights()
    if [v.shape for v in values] == [tuple(w.shape) for w in layer.weights]:
      layer.set_weights(values)
      copied += 1
    else:
      skipped.append(layer.name)
  if not copied:
    raise ValueError(f"--init_checkpoint {checkpoint!r} shares no layer shapes with {model.name}")
  logging.info("warm start from %s: %d layers copied, %d skipped (%s)", checkpoint, copied,
               len(skipped), ", ".join(skipped[:5]))
  return {"copied": copied, "skipped": skipped}
