"""Loads tensorflow/tpu EfficientNet TF1 checkpoints (the released Noisy Student ones) into ours.

The reference names variables by TF1 `tf.layers` auto-numbering in call order, under the model
name: `efficientnet-b0/blocks_3/tpu_batch_normalization_1/gamma`. The map below is the one
TensorFlow's own `efficientnet_weight_update_util.py` uses. Every weight of our model must come
from the checkpoint (or be skipped on purpose with include_top=False), and every model variable of
the checkpoint must be used; anything else is an error that names the variable.
"""

import logging

EMA_SUFFIX = "/ExponentialMovingAverage"
# Variables that are training state, not model: optimizer slots, step counters.
_NON_MODEL_MARKERS = ("RMSProp", "Momentum", "global_step", "Adam")

# Keras layer suffix -> reference sub-scope, for blocks with and without an expand conv.
_BLOCK_MAP_EXPANDED = {
    "expand_conv": "conv2d", "expand_bn": "tpu_batch_normalization",
    "dwconv": "depthwise_conv2d", "bn": "tpu_batch_normalization_1",
    "se_reduce": "se/conv2d", "se_expand": "se/conv2d_1",
    "project_conv": "conv2d_1", "project_bn": "tpu_batch_normalization_2",
}
_BLOCK_MAP_NO_EXPAND = {
    "dwconv": "depthwise_conv2d", "bn": "tpu_batch_normalization",
    "se_reduce": "se/conv2d", "se_expand": "se/conv2d_1",
    "project_conv": "conv2d", "project_bn": "tpu_batch_normalization_1",
}
_TOP_MAP = {
    "stem_conv": "stem/conv2d", "stem_bn": "stem/tpu_batch_normalization",
    "top_conv": "head/conv2d", "top_bn": "head/tpu_batch_normalization",
    "predictions": "head/dense",
}


def reference_names(model, scope):
  """Maps each of the model's weights (by path) to its reference checkpoint name."""
  block_scope = {b.name: (f"blocks_{b.index}", b.expand_ratio != 1) for b in model.block_plan}
  names = {}
  for layer in model.layers:
    if not layer.weights:
      continue
    if layer.name in _TOP_MAP:
      ref_layer = _TOP_MAP[layer.name]
    else:
      for block_name, (blocks_i, expanded) in block_scope.items():
        if layer.name.startswith(block_name):
          suffix = layer.name[len(block_name):]
          table = _BLOCK_MAP_EXPANDED if expanded else _BLOCK_MAP_NO_EXPAND
          if suffix not in table:
            raise ValueError(f"No reference name for layer {layer.name!r}")
          ref_layer = f"{blocks_i}/{table[suffix]}"
          break
      else:
        raise ValueError(f"No reference name for layer {layer.name!r}")
    for weight in layer.weights:
      leaf = weight.path.rsplit("/", 1)[-1]
      if ref_layer.endswith("depthwise_conv2d") and leaf == "kernel":
        leaf = "depthwise_kernel"  # Keras 3's name for it is "kernel"; TF1's was not.
      names[weight.path] = f"{scope}/{ref_layer}/{leaf}"
  return names


def _resolve_checkpoint(path):
  import tensorflow as tf
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f"No TF checkpoint found in directory {path!r}")
    return latest
  return path


def _find_scope(var_shapes, wanted, ckpt_path):
  scopes = sorted({name.split("/", 1)[0] for name in var_shapes
                   if name.endswith("/stem/conv2d/kernel")})
  if wanted in scopes:
    return wanted
  raise ValueError(
      f"Checkpoint {ckpt_path!r} holds no model scope {wanted!r}; it holds {scopes or 'none'}. "
      "Build the matching variant, or pass scope= to load across names.")


def _open(path):
  """(checkpoint prefix, reader) of a checkpoint prefix or directory; unreadable: ValueError."""
  import tensorflow as tf  # Only the checkpoint reader needs TF; the model may run on JAX.
  ckpt_path = _resolve_checkpoint(path)
  try:
    return ckpt_path, tf.train.load_checkpoint(ckpt_path)
  except Exception as e:
    raise ValueError(f"Cannot read TF checkpoint {ckpt_path!r}: {e}") from e


def checkpoint_classes(path, scope):
  """The class count of a reference checkpoint's classifier under model scope `scope` (the
  variant's name): the last dimension of its head/dense/kernel."""
  ckpt_path, reader = _open(path)
  var_shapes = reader.get_variable_to_shape_map()
  kernel = f"{_find_scope(var_shapes, scope, ckpt_path)}/head/dense/kernel"
  if kernel not in var_shapes:
    raise ValueError(f"Checkpoint {ckpt_path!r} has no classifier ({kernel})")
  return int(var_shapes[kernel][-1])


def load_reference_checkpoint(model, path, use_ema=True, include_top=True, scope=None):
  """Assigns a tensorflow/tpu EfficientNet checkpoint's weights to `model` (from build_model).

  Args:
    model: an EfficientNet from `build_model`.
    path: checkpoint prefix (".../model.ckpt") or a directory with a `checkpoint` file; local or
      gs://.
    use_ema: take the `ExponentialMovingAverage` shadow of each variable where the checkpoint has
      one (the released models were evaluated with them).
    include_top: also load the classifier; False leaves `predictions` as initialised, e.g. to
      fine-tune on other classes.
    scope: the checkpoint's top-level name scope (default: the model's variant name).

  Returns:
    A report dict: counts of weights loaded, from EMA shadows, and any raw-value fallbacks.
  """
  ckpt_path, reader = _open(path)
  var_shapes = reader.get_variable_to_shape_map()
  scope = _find_scope(var_shapes, scope or model.efficientnet_config["variant"], ckpt_path)

  mapping = reference_names(model, scope)
  weights = {w.path: w for w in model.weights}
  skipped_prefix = f"{scope}/head/dense/"
  report = {"checkpoint": ckpt_path, "scope": scope, "loaded": 0, "from_ema": 0,
            "raw_fallback": [], "skipped": []}
  missing, misshaped, assignments = [], [], []
  for path_in_model, ref_name in mapping.items():
    weight = weights[path_in_model]
    if not include_top and ref_name.startswith(skipped_prefix):
      report["skipped"].append(path_in_model)
      continue
    source = ref_name
    if use_ema and ref_name + EMA_SUFFIX in var_shapes:
      source = ref_name + EMA_SUFFIX
    elif ref_name not in var_shapes:
      missing.append(f"{ref_name} (for {path_in_model})")
      continue
    elif use_ema:
      report["raw_fallback"].append(ref_name)
    if tuple(var_shapes[source]) != tuple(weight.shape):
      misshaped.append(f"{source}: checkpoint {tuple(var_shapes[source])}, "
                       f"model {path_in_model} {tuple(weight.shape)}")
      continue
    assignments.append((weight, source))
  if missing or misshaped:
    raise ValueError(
        f"Checkpoint {ckpt_path!r} does not fit model {model.name!r}: "
        + (f"{len(missing)} missing: {missing[:10]} " if missing else "")
        + (f"{len(misshaped)} mis-shaped: {misshaped[:10]}" if misshaped else ""))

  used = set(mapping.values())
  unused = sorted(
      name for name in var_shapes
      if name.startswith(scope + "/") and not name.endswith(EMA_SUFFIX)
      and not any(marker in name for marker in _NON_MODEL_MARKERS) and name not in used)
  if unused:
    raise ValueError(f"Checkpoint {ckpt_path!r} has {len(unused)} model variables that "
                     f"{model.name!r} does not use (wrong variant?): {unused[:10]}")

  for weight, source in assignments:
    weight.assign(reader.get_tensor(source))
    report["loaded"] += 1
    report["from_ema"] += source.endswith(EMA_SUFFIX)
  if report["raw_fallback"]:
    logging.warning("%d variables have no EMA shadow in %s; used raw values (e.g. %s)",
                    len(report["raw_fallback"]), ckpt_path, report["raw_fallback"][0])
  return report
