"""iterate --teacher_checkpoint: round 0 is a given checkpoint, not a trained teacher; it is
evaluated, and round 1 predicts with it exactly as predict does with that checkpoint."""

import json

import numpy as np
import pytest
from absl import flags

import main
from tests import bright_channel

TINY_MODEL = ["--small_image", "--image_size=16", "--width_coefficient=0.1",
              "--depth_coefficient=0.1"]
# ImageNet's mean/std, which a reference checkpoint is seen with, rather than the manifest's.
TRAIN = ["--batch_size=8", "--warmup_epochs=0", "--seed=3", "--train_steps=6",
         "--normalization=imagenet"]


def run(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Converted tiny splits and a teacher trained on them."""
  root = tmp_path_factory.mktemp("teacher_checkpoint")
  for split, n, seed in (("labeled", 48, 1), ("unlabeled", 40, 2), ("test", 30, 3)):
    images, labels = bright_channel.images(n, seed)
    np.savez(root / f"{split}.npz", images=images, labels=labels)
    run("--mode=convert", "--source=npz", f"--input={root / split}.npz",
        f"--output={root / split}", f"--split={split}", "--num_shards=2",
        *(["--unlabeled"] if split == "unlabeled" else []))
  run("--mode=train", f"--labeled_data={root / 'labeled'}", f"--eval_data={root / 'test'}",
      f"--workdir={root / 'teacher'}", *TRAIN, *TINY_MODEL)
  return root


# Oracle: the project's own predict mode (two paths agree: iterate's predict = predict's).
# Slow (about 32 s, a whole iterate round); tests/integration/test_iterate.py runs iterate by default.
@pytest.mark.slow
def test_iterate_starts_from_the_given_teacher_as_predict_uses_it(data, tmp_path,
                                                                  prediction_records):
  teacher = data / "teacher"
  run("--mode=predict", f"--checkpoint={teacher}", f"--unlabeled_data={data / 'unlabeled'}",
      f"--output={tmp_path / 'predict'}")
  run("--mode=eval", f"--checkpoint={teacher}", f"--eval_data={data / 'test'}",
      f"--output={tmp_path / 'eval'}")
  workdir = tmp_path / "iterate"
  args = ["--mode=iterate", "--iterations=1", f"--workdir={workdir}",
          f"--labeled_data={data / 'labeled'}", f"--unlabeled_data={data / 'unlabeled'}",
          f"--eval_data={data / 'test'}", "--images_per_class=10", "--confidence_threshold=0",
          *TRAIN, *TINY_MODEL]
  run(*args, f"--teacher_checkpoint={teacher}")

  assert not (workdir / "iter_0" / "train").exists()  # no teacher trained
  summary = json.loads((workdir / "summary.json").read_text())
  teacher_row, student_row = summary["rounds"]
  assert (teacher_row["role"], teacher_row["model"]) == ("teacher", "efficientnet-b0")
  expected = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert teacher_row["top1"] == expected["top1"] and teacher_row["top5"] == expected["top5"]
  assert f"{100 * expected['top1']:.2f}" in summary["table"][1]
  assert student_row["role"] == "student" and (workdir / "iter_1" / "eval" / "DONE").exists()

  predicted = json.loads((tmp_path / "predict" / "summary.json").read_text())
  in_iterate = json.loads((workdir / "iter_1" / "predict" / "summary.json").read_text())
  assert len(predicted["shards"]) == len(in_iterate["shards"]) == 2
  for mine, theirs in zip(predicted["shards"], in_iterate["shards"]):
    a = prediction_records(tmp_path / "predict" / mine["output"])
    b = prediction_records(workdir / "iter_1" / "predict" / theirs["output"])
    assert sorted(a) == sorted(b) and a["image/key"] == b["image/key"]
    for field in a:  # keys, labels, confidences and probabilities, bit for bit
      np.testing.assert_array_equal(a[field], b[field], err_msg=field)

  # Another teacher for the same workdir is refused before any work (its rounds would mix).
  with pytest.raises(SystemExit, match="teacher_checkpoint"):
    run(*args, f"--teacher_checkpoint={teacher / 'model.keras'}")


# Oracle: the project's own predict mode (two paths agree: iterate's predict = predict's).
@pytest.mark.slow  # about 40 s: another iterate round
def test_iterate_starts_from_a_reference_checkpoint_as_predict_uses_it(data, tmp_path,
                                                                       prediction_records):
  """A tensorflow/tpu TF1 checkpoint (--checkpoint_format=reference, the released ones' format),
  written here from the tiny teacher's weights under the reference's names: round 1 predicts as
  predict does with it, and --student_init=teacher warm-starts the student from it."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from efficientnet import reference_checkpoint  # pylint: disable=g-import-not-at-top
  model = keras.models.load_model(data / "teacher" / "model.keras", compile=False)
  names = reference_checkpoint.reference_names(model, "efficientnet-b0")
  values = {names[w.path]: w.numpy() for w in model.weights}
  prefix = str(tmp_path / "reference" / "model.ckpt")
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=sorted(values),
                    shape_and_slices=[""] * len(values),
                    tensors=[tf.constant(values[n]) for n in sorted(values)])
  # A reference checkpoint is seen at its variant's resolution (b0's 224) unless
  # --inference_image_size names another: this one was trained at 16.
  reference = ["--checkpoint_format=reference", "--num_classes=3", "--inference_image_size=16",
               *TINY_MODEL]
  run("--mode=predict", f"--checkpoint={prefix}", f"--unlabeled_data={data / 'unlabeled'}",
      f"--output={tmp_path / 'predict'}", "--normalization=imagenet", *reference)
  workdir = tmp_path / "iterate"
  run("--mode=iterate", "--iterations=1", f"--workdir={workdir}",
      f"--labeled_data={data / 'labeled'}", f"--unlabeled_data={data / 'unlabeled'}",
      f"--eval_data={data / 'test'}", "--images_per_class=10", "--confidence_threshold=0",
      "--student_init=teacher", f"--teacher_checkpoint={prefix}", *TRAIN, *reference)

  assert not (workdir / "iter_0" / "train").exists()
  history = json.loads((workdir / "iter_1" / "train" / "history.json").read_text())
  assert history["total_steps"] == 6
  predicted = json.loads((tmp_path / "predict" / "summary.json").read_text())
  in_iterate = json.loads((workdir / "iter_1" / "predict" / "summary.json").read_text())
  for mine, theirs in zip(predicted["shards"], in_iterate["shards"], strict=True):
    a = prediction_records(tmp_path / "predict" / mine["output"])
    b = prediction_records(workdir / "iter_1" / "predict" / theirs["output"])
    assert sorted(a) == sorted(b)
    for field in a:
      np.testing.assert_array_equal(a[field], b[field], err_msg=field)
