"""Loading tensorflow/tpu TF1 checkpoints, tested on a checkpoint written here under the
reference's variable names (efficientnet-and-randaugment.md section 8.2), since the released ones
cannot be downloaded on these machines."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet

TINY = dict(width_coefficient=0.25, depth_coefficient=0.3)
BN = ("gamma", "beta", "moving_mean", "moving_variance")


def reference_variables(model, scope):
  """The reference's variable names with our weights' shapes, written out from the digest's table:
  TF1 tf.layers numbering in call order, separately for blocks with and without an expand conv."""
  shapes = {}

  def add(layer_name, ref_scope, leaves):
    for weight, leaf in zip(model.get_layer(layer_name).weights, leaves):
      shapes[f"{scope}/{ref_scope}/{leaf}"] = tuple(weight.shape)

  add("stem_conv", "stem/conv2d", ["kernel"])
  add("stem_bn", "stem/tpu_batch_normalization", BN)
  for i, block in enumerate(model.block_plan):
    p, s = block.name, f"blocks_{i}"
    bn_index = 0
    conv_index = 0
    if block.expand_ratio != 1:
      add(p + "expand_conv", f"{s}/conv2d", ["kernel"])
      add(p + "expand_bn", f"{s}/tpu_batch_normalization", BN)
      bn_index, conv_index = 1, 1
    add(p + "dwconv", f"{s}/depthwise_conv2d", ["depthwise_kernel"])
    add(p + "bn", f"{s}/tpu_batch_normalization" + (f"_{bn_index}" if bn_index else ""), BN)
    add(p + "se_reduce", f"{s}/se/conv2d", ["kernel", "bias"])
    add(p + "se_expand", f"{s}/se/conv2d_1", ["kernel", "bias"])
    add(p + "project_conv", f"{s}/conv2d" + (f"_{conv_index}" if conv_index else ""), ["kernel"])
    add(p + "project_bn", f"{s}/tpu_batch_normalization_{bn_index + 1}", BN)
  add("top_conv", "head/conv2d", ["kernel"])
  add("top_bn", "head/tpu_batch_normalization", BN)
  add("predictions", "head/dense", ["kernel", "bias"])
  return shapes


def write_checkpoint(prefix, tensors):
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return str(prefix)


@pytest.fixture
def model_and_checkpoint(tmp_path):
  model = efficientnet.build_model("efficientnet-b0", 5, **TINY)
  shapes = reference_variables(model, "efficientnet-b0")
  assert len(shapes) == len(model.weights)
  rng = np.random.default_rng(0)
  raw = {n: rng.normal(size=s).astype("float32") for n, s in shapes.items()}
  ema = {n + "/ExponentialMovingAverage": rng.normal(size=s).astype("float32")
         for n, s in shapes.items()}
  training_state = {n + "/RMSProp": np.ones(s, "float32") for n, s in shapes.items()}
  training_state["global_step"] = np.array(1000, "int64")
  prefix = write_checkpoint(tmp_path / "model.ckpt", {**raw, **ema, **training_state})
  return model, prefix, raw, ema


def test_loads_ema_shadows_into_every_weight(model_and_checkpoint):
  model, prefix, raw, ema = model_and_checkpoint
  report = efficientnet.load_reference_checkpoint(model, prefix, use_ema=True)
  assert report["loaded"] == len(model.weights) == report["from_ema"]
  got = {w.path: np.asarray(w) for w in model.weights}
  expected_names = reference_variables(model, "efficientnet-b0")
  ours_in_order = [w.path for l in model.layers for w in l.weights]
  for name, path in zip(expected_names, ours_in_order):
    np.testing.assert_array_equal(got[path], ema[name + "/ExponentialMovingAverage"], err_msg=path)


def test_loads_raw_values_without_ema_and_from_a_directory(model_and_checkpoint, tmp_path):
  model, prefix, raw, _ = model_and_checkpoint
  with open(tmp_path / "checkpoint", "w") as f:
    f.write('model_checkpoint_path: "model.ckpt"\n')
  efficientnet.load_reference_checkpoint(model, str(tmp_path), use_ema=False)
  np.testing.assert_array_equal(model.get_layer("block2a_dwconv").kernel,
                                raw["efficientnet-b0/blocks_1/depthwise_conv2d/depthwise_kernel"])
  np.testing.assert_array_equal(model.get_layer("block1a_project_bn").moving_variance,
                                raw["efficientnet-b0/blocks_0/tpu_batch_normalization_1/"
                                    "moving_variance"])


def test_include_top_false_keeps_the_classifier_for_new_classes(tmp_path, model_and_checkpoint):
  _, prefix, _, ema = model_and_checkpoint
  other = efficientnet.build_model("efficientnet-b0", 3, **TINY)   # 3 classes, checkpoint has 5
  before = other.get_layer("predictions").get_weights()
  report = efficientnet.load_reference_checkpoint(other, prefix, include_top=False)
  assert len(report["skipped"]) == 2
  for a, b in zip(before, other.get_layer("predictions").get_weights()):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
      other.get_layer("top_conv").kernel,
      ema["efficientnet-b0/head/conv2d/kernel/ExponentialMovingAverage"])
  with pytest.raises(ValueError, match="mis-shaped.*head/dense/kernel"):
    efficientnet.load_reference_checkpoint(other, prefix)


def test_missing_variable_is_an_error_naming_it(tmp_path, model_and_checkpoint):
  model, _, raw, _ = model_and_checkpoint
  del raw["efficientnet-b0/blocks_3/se/conv2d_1/bias"]
  prefix = write_checkpoint(tmp_path / "partial.ckpt", raw)
  with pytest.raises(ValueError, match=r"missing.*blocks_3/se/conv2d_1/bias"):
    efficientnet.load_reference_checkpoint(model, prefix)


def test_unused_checkpoint_variable_and_wrong_variant_are_errors(tmp_path, model_and_checkpoint):
  model, _, raw, _ = model_and_checkpoint
  extra = dict(raw)
  extra["efficientnet-b0/blocks_99/conv2d/kernel"] = np.zeros((1, 1, 8, 8), "float32")
  with pytest.raises(ValueError, match="does not use.*blocks_99"):
    efficientnet.load_reference_checkpoint(model, write_checkpoint(tmp_path / "x.ckpt", extra))
  renamed = {n.replace("efficientnet-b0", "efficientnet-b1"): v for n, v in raw.items()}
  with pytest.raises(ValueError, match="efficientnet-b1"):
    efficientnet.load_reference_checkpoint(model, write_checkpoint(tmp_path / "y.ckpt", renamed))


def test_unreadable_checkpoint_names_the_path(tmp_path):
  model = efficientnet.build_model("efficientnet-b0", 5, **TINY)
  with pytest.raises((ValueError, FileNotFoundError), match="nothing"):
    efficientnet.load_reference_checkpoint(model, str(tmp_path / "nothing" / "model.ckpt"))
  keras.backend.clear_session()


def test_loading_without_a_class_count_takes_the_checkpoints_own(model_and_checkpoint):
  """predict/eval/iterate with --checkpoint_format=reference and no --num_classes: the model is
  built with the classifier's class count written in the checkpoint (5 here, not ImageNet's
  1000), and its logits are the checkpoint's head applied by NumPy to the model's features."""
  from noisy_student import checkpoints  # pylint: disable=g-import-not-at-top
  _, prefix, _, ema = model_and_checkpoint
  assert efficientnet.checkpoint_classes(prefix, "efficientnet-b0") == 5
  model = checkpoints.load_model(prefix, checkpoint_format="reference",
                                 model_args=dict(variant="efficientnet-b0", **TINY))
  assert checkpoints.model_classes(model) == 5
  images = np.random.default_rng(1).normal(size=(2, 224, 224, 3)).astype("float32")
  features = keras.Model(model.inputs, model.get_layer("avg_pool").output)(images)
  head = "efficientnet-b0/head/dense/{}/ExponentialMovingAverage"
  expected = np.asarray(features) @ ema[head.format("kernel")] + ema[head.format("bias")]
  np.testing.assert_allclose(model(images, training=False), expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="efficientnet-b1"):
    efficientnet.checkpoint_classes(prefix, "efficientnet-b1")
  keras.backend.clear_session()
