"""Bad input through main.py: each case is a clear error naming the file, record or flag before
anything is written, or a counted skip in the run's JSON (predict's summary.json, filter's
stats.json, convert's manifest.json). The libraries' own handling is tested in tests/data/
(test_convert.py, test_pipeline.py), tests/noisy_student/ (test_filter_balance.py,
phases/test_filter_phase.py) and tests/test_main.py; these tests follow the same inputs through
the command line and from one phase into the next."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

import efficientnet
import main
from data import convert
from data import records
from noisy_student.training import optimizers
from noisy_student.phases import predict

TINY = dict(small_image=True, image_size=16, width_coefficient=0.1, depth_coefficient=0.1)
TINY_MODEL = ["--small_image", "--image_size=16", "--width_coefficient=0.1",
              "--depth_coefficient=0.1"]
# teacher.keras is a model file without its train run: its normalisation must be named.
BARE_TEACHER = [*TINY_MODEL, "--normalization=imagenet"]
NUM_CLASSES = 3


def run(*args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


def _error(*args):
  with pytest.raises(SystemExit) as raised:
    run(*args)
  return str(raised.value)


def _convert(root, split, n, seed, num_classes=NUM_CLASSES, unlabeled=False):
  rng = np.random.default_rng(seed)
  np.savez(root / f"{split}.npz", images=rng.integers(0, 256, (n, 16, 16, 3), np.uint8),
           labels=np.arange(n) % num_classes)
  convert.convert("npz", str(root / f"{split}.npz"), str(root / split), split=split,
                  num_shards=2, unlabeled=unlabeled)
  return root / split


def _jpeg(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG")
  return buffer.getvalue()


def _png(image):
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


TRUNCATED_JPEG = _jpeg(np.full((16, 16, 3), 90, np.uint8))[:-40]


def _serialized(path):
  return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def _keys(path):
  return [tf.train.Example.FromString(r).features.feature[records.KEY].bytes_list.value[0]
          for r in _serialized(path)]


def _edit_record(path, index, **fields):
  """Rewrites record `index` of a shard: its key kept, the given fields replaced."""
  serialized = _serialized(path)
  feature = tf.train.Example.FromString(serialized[index]).features.feature
  values = {"key": feature[records.KEY].bytes_list.value[0]}
  for name, field in (("label", records.LABEL), ("confidence", records.CONFIDENCE)):
    if field in feature:
      values[name] = (feature[field].int64_list.value or feature[field].float_list.value)[0]
  values.update(fields)
  serialized[index] = records.make_example(**values)
  records.write_atomically(str(path), serialized)
  return values["key"].decode()


def _shards(directory):
  return sorted(directory.glob("*.tfrecord"))


def _nothing_final_in(directory):
  return not directory.exists() or not [n for n in os.listdir(directory) if not n.startswith(".")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Labeled and unlabeled shards (2 each) and a tiny untrained teacher."""
  root = tmp_path_factory.mktemp("inputs")
  _convert(root, "labeled", 24, 1)
  _convert(root, "unlabeled", 24, 2, unlabeled=True)
  efficientnet.build_model("efficientnet-b0", NUM_CLASSES, **TINY).save(root / "teacher.keras")
  return root


def _predict(root, unlabeled, output, *extra):
  run("--mode=predict", f"--checkpoint={root / 'teacher.keras'}", "--normalization=imagenet",
      f"--unlabeled_data={unlabeled}",
      f"--output={output}", "--batch_size=8", *TINY_MODEL, *extra)
  return json.loads((output / "summary.json").read_text())


def _filter(predictions, unlabeled, output):
  run("--mode=filter", f"--predictions={predictions}", f"--unlabeled_data={unlabeled}",
      f"--output={output}", "--nobalance", "--confidence_threshold=0", "--num_shards=2")
  return json.loads((output / "stats.json").read_text())


@pytest.fixture(scope="module")
def undecodable(inputs, tmp_path_factory):
  """Unlabeled shards holding a truncated JPEG and bytes that are no image, and their
  predictions."""
  root = tmp_path_factory.mktemp("undecodable")
  shutil.copytree(inputs / "unlabeled", root / "unlabeled")
  first, second = _shards(root / "unlabeled")
  bad = [_edit_record(first, 1, image=TRUNCATED_JPEG), _edit_record(second, 4, image=b"no image")]
  summary = _predict(inputs, root / "unlabeled", root / "predictions")
  return root, bad, summary


def test_undecodable_images_are_counted_by_predict_and_then_by_filter(undecodable):
  root, bad, summary = undecodable
  assert summary["images"] == 24 and summary["undecodable"] == 2
  assert sorted(k for e in summary["shards"] for k in e["undecodable_keys"]) == sorted(bad)
  for shard in _shards(root / "unlabeled"):  # placeholders keep record i at position i
    assert _keys(root / "predictions" / shard.name) == _keys(shard)
  stats = _filter(root / "predictions", root / "unlabeled", root / "filtered")
  assert stats["totals"]["invalid"] == 2 and stats["totals"]["kept_unique"] == 22
  kept = {k.decode() for shard in _shards(root / "filtered") for k in _keys(shard)}
  assert len(kept) == 22 and not kept & set(bad)


def test_shards_with_no_decodable_image_or_no_record_are_predicted_in_line(inputs, tmp_path):
  """predict reads all shards as one stream; a shard that gives it no image (all undecodable,
  or empty) between two that do still gets its prediction shard, record for record."""
  first, last = _shards(inputs / "unlabeled")
  unlabeled = tmp_path / "unlabeled"
  unlabeled.mkdir()
  shutil.copy(first, unlabeled / "a.tfrecord")
  shutil.copy(last, unlabeled / "d.tfrecord")
  broken = [records.make_example(key=f"broken/{i}", image=b"no image") for i in range(3)]
  records.write_atomically(str(unlabeled / "b.tfrecord"), broken)
  records.write_atomically(str(unlabeled / "c.tfrecord"), [])
  summary = _predict(inputs, f"{unlabeled}/*.tfrecord", tmp_path / "predictions")
  assert [e["count"] for e in summary["shards"]] == [12, 3, 0, 12]
  assert [e["undecodable"] for e in summary["shards"]] == [0, 3, 0, 0]
  for shard in _shards(unlabeled):
    assert _keys(tmp_path / "predictions" / shard.name) == _keys(shard)


def test_nan_and_negative_probabilities_are_counted_by_filter(undecodable, tmp_path):
  root, bad, _ = undecodable
  predictions = tmp_path / "predictions"
  shutil.copytree(root / "predictions", predictions)
  first, second = _shards(predictions)
  edited = [_edit_record(first, 5, probabilities=[np.nan, 0.5, 0.5]),
            _edit_record(second, 0, probabilities=[-0.2, 0.6, 0.6])]
  stats = _filter(predictions, root / "unlabeled", tmp_path / "filtered")
  # The edited records keep their labels; the undecodable ones' placeholders have none (-1).
  assert stats["totals"]["invalid_probability"] == 2 and stats["totals"]["invalid_label"] == 2
  kept = {k.decode() for shard in _shards(tmp_path / "filtered") for k in _keys(shard)}
  assert len(kept) == 20 and not kept & set(bad + edited)


def test_prediction_shards_that_do_not_line_up_with_their_images_are_an_error(undecodable,
                                                                              inputs, tmp_path):
  root, _, _ = undecodable
  predictions = tmp_path / "predictions"
  shutil.copytree(root / "predictions", predictions)
  second = _shards(predictions)[1]
  serialized = _serialized(second)
  serialized[2], serialized[3] = serialized[3], serialized[2]
  records.write_atomically(str(second), serialized)
  # --images_per_class that fits the 24 images: the paper's 130,000 is refused before reading.
  message = _error("--mode=filter", f"--predictions={predictions}",
                   f"--unlabeled_data={root / 'unlabeled'}", f"--output={tmp_path / 'out'}",
                   "--images_per_class=8")
  assert "record 2 of" in message
  assert str(second) in message and str(root / "unlabeled" / second.name) in message
  assert _nothing_final_in(tmp_path / "out")
  # Predictions of other images: the first keys already differ.
  message = _error("--mode=filter", f"--predictions={root / 'predictions'}",
                   f"--unlabeled_data={inputs / 'labeled'}", f"--output={tmp_path / 'out'}",
                   "--images_per_class=8")
  assert "record 0 of" in message and str(inputs / "labeled") in message
  assert _nothing_final_in(tmp_path / "out")


def test_truncated_shards_are_an_error_naming_them(undecodable, inputs, tmp_path):
  shutil.copytree(inputs / "unlabeled", tmp_path / "unlabeled")
  first, second = _shards(tmp_path / "unlabeled")
  second.write_bytes(second.read_bytes()[:-30])  # the last record cut short
  output = tmp_path / "predictions"
  message = _error("--mode=predict", f"--checkpoint={inputs / 'teacher.keras'}",
                   f"--unlabeled_data={tmp_path / 'unlabeled'}", f"--output={output}",
                   *BARE_TEACHER)
  assert f"cannot read {second} past record 11" in message
  # The shard before it is finished (a rerun keeps it); nothing of the damaged one is written.
  assert sorted(os.listdir(output)) == sorted([first.name, predict.RUN_IDENTITY])
  # A truncated prediction shard stops the filter before it writes anything.
  root, _, _ = undecodable
  predictions = tmp_path / "copied_predictions"
  shutil.copytree(root / "predictions", predictions)
  damaged = _shards(predictions)[0]
  damaged.write_bytes(damaged.read_bytes()[:-30])
  message = _error("--mode=filter", f"--predictions={predictions}",
                   f"--unlabeled_data={root / 'unlabeled'}", f"--output={tmp_path / 'out'}",
                   "--images_per_class=8")
  assert f"cannot read prediction shard {damaged}" in message
  assert _nothing_final_in(tmp_path / "out")


def test_folder_with_corrupt_and_truncated_jpegs_converts_the_rest_and_lists_them(tmp_path):
  rng = np.random.default_rng(0)
  for name in ("cat/a.jpg", "cat/b.jpg", "dog/c.jpg", "dog/d.jpg"):
    (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "in" / name).write_bytes(_jpeg(rng.integers(0, 256, (16, 16, 3), np.uint8)))
  (tmp_path / "in" / "cat" / "truncated.jpg").write_bytes(TRUNCATED_JPEG)
  (tmp_path / "in" / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(300))
  run("--mode=convert", "--source=folder", f"--input={tmp_path / 'in'}",
      f"--output={tmp_path / 'out'}", "--split=train", "--num_shards=2")
  entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["splits"]["train"]
  assert entry["num_examples"] == 4 and entry["num_skipped"] == 2
  assert sorted(s["key"] for s in entry["skipped"]) == ["train/cat/truncated.jpg",
                                                         "train/dog/corrupt.jpg"]
  assert all(s["reason"] for s in entry["skipped"])


def test_folder_where_no_image_decodes_is_an_error_and_leaves_no_shards(tmp_path):
  (tmp_path / "in" / "cat").mkdir(parents=True)
  (tmp_path / "in" / "cat" / "truncated.jpg").write_bytes(TRUNCATED_JPEG)
  (tmp_path / "in" / "cat" / "text.jpg").write_bytes(b"not an image")
  with pytest.raises(SystemExit, match=r"none of the 2 images .* could be converted"):
    run("--mode=convert", "--source=folder", f"--input={tmp_path / 'in'}",
        f"--output={tmp_path / 'out'}", "--split=train", "--num_shards=2")
  assert not list((tmp_path / "out").iterdir())


def test_images_of_other_sizes_and_channel_counts_are_converted_and_predicted(inputs, tmp_path):
  rng = np.random.default_rng(1)
  images = {
      "gray.png": _png(Image.fromarray(rng.integers(0, 256, (20, 20), np.uint8))),
      "rgba.png": _png(Image.fromarray(rng.integers(0, 256, (12, 10, 4), np.uint8))),
      "palette.png": _png(Image.fromarray(rng.integers(0, 256, (9, 9, 3), np.uint8)).convert(
          "P", palette=Image.Palette.ADAPTIVE, colors=8)),
      "large.jpg": _jpeg(rng.integers(0, 256, (40, 30, 3), np.uint8)),
      "gray.jpg": _jpeg(rng.integers(0, 256, (16, 16), np.uint8)),
  }
  (tmp_path / "in").mkdir()
  for name, data in images.items():
    (tmp_path / "in" / name).write_bytes(data)
  run("--mode=convert", "--source=folder", f"--input={tmp_path / 'in'}", "--unlabeled",
      f"--output={tmp_path / 'mixed'}", "--split=extra", "--num_shards=1")
  entry = json.loads((tmp_path / "mixed" / "manifest.json").read_text())["splits"]["extra"]
  assert entry["num_examples"] == 5 and entry["num_skipped"] == 0 and entry["image_size"] is None
  summary = _predict(inputs, tmp_path / "mixed", tmp_path / "predictions")
  assert summary["images"] == 5 and summary["undecodable"] == 0
  # An array source with a channel count no image has: an error before anything is written.
  np.savez(tmp_path / "two.npz", images=np.zeros((4, 8, 8, 2), np.uint8))
  message = _error("--mode=convert", "--source=npz", f"--input={tmp_path / 'two.npz'}",
                   f"--output={tmp_path / 'two'}", "--split=train")
  assert str(tmp_path / "two.npz") in message and "(4, 8, 8, 2)" in message
  assert not (tmp_path / "two").exists()


@pytest.mark.parametrize("mode", ["convert", "predict", "filter", "eval"])
def test_empty_directory_is_an_error_naming_it_before_anything_is_written(inputs, tmp_path,
                                                                         mode):
  # (train: tests/integration/test_end_to_end.py)
  empty, output = tmp_path / "empty", tmp_path / "out"
  empty.mkdir()
  args = {
      "convert": ["--source=folder", f"--input={empty}", "--split=train"],
      "predict": [f"--checkpoint={inputs / 'teacher.keras'}", f"--unlabeled_data={empty}",
                  *BARE_TEACHER],
      "filter": [f"--predictions={empty}", f"--unlabeled_data={inputs / 'unlabeled'}"],
      "eval": [f"--checkpoint={inputs / 'teacher.keras'}", f"--eval_data={empty}",
               *BARE_TEACHER],
  }[mode]
  message = _error(f"--mode={mode}", f"--output={output}", *args)
  assert str(empty) in message
  assert not output.exists()


def test_checkpoint_of_another_variant_or_class_count_stops_predict(inputs, tmp_path):
  output = tmp_path / "out"
  message = _error("--mode=predict", f"--checkpoint={inputs / 'teacher.keras'}",
                   f"--unlabeled_data={inputs / 'unlabeled'}", f"--output={output}",
                   "--num_classes=5", *BARE_TEACHER)
  assert "teacher.keras" in message and "3 classes" in message and "5" in message
  # A tensorflow/tpu checkpoint of efficientnet-b0 read as efficientnet-b1.
  prefix = str(tmp_path / "reference" / "model.ckpt")
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["efficientnet-b0/stem/conv2d/kernel"],
                    shape_and_slices=[""], tensors=[tf.zeros([3, 3, 3, 8])])
  message = _error("--mode=predict", "--checkpoint_format=reference", f"--checkpoint={prefix}",
                   "--model=efficientnet-b1", f"--unlabeled_data={inputs / 'unlabeled'}",
                   f"--output={output}", *BARE_TEACHER)
  assert prefix in message and "efficientnet-b1" in message and "efficientnet-b0" in message
  assert not output.exists()


def test_predict_into_an_output_of_another_teacher_or_top_k_is_an_error(inputs, tmp_path):
  """A rerun keeps the prediction shards it finds; they must be the same teacher's."""
  output = tmp_path / "predictions"
  first = _predict(inputs, inputs / "unlabeled", output)
  shards = {p.name: p.read_bytes() for p in output.glob("*.tfrecord")}
  other = efficientnet.build_model("efficientnet-b0", NUM_CLASSES, **TINY)  # new random weights
  other.save(tmp_path / "other.keras")
  message = _error("--mode=predict", f"--checkpoint={tmp_path / 'other.keras'}",
                   f"--unlabeled_data={inputs / 'unlabeled'}", f"--output={output}", *BARE_TEACHER)
  assert str(output) in message and "teacher" in message
  message = _error("--mode=predict", f"--checkpoint={inputs / 'teacher.keras'}",
                   f"--unlabeled_data={inputs / 'unlabeled'}", f"--output={output}",
                   "--top_k=2", *BARE_TEACHER)
  assert "top_k" in message and "teacher" not in message
  assert {p.name: p.read_bytes() for p in output.glob("*.tfrecord")} == shards  # untouched
  # The same teacher and settings resume (every shard kept).
  again = _predict(inputs, inputs / "unlabeled", output)
  assert all(entry["resumed"] for entry in again["shards"])
  assert again["images"] == first["images"]


def _train_args(inputs, workdir, *extra):
  return ["--mode=train", f"--labeled_data={inputs / 'labeled'}", f"--workdir={workdir}",
          "--eval_data=", "--train_steps=3", "--batch_size=8", *TINY_MODEL, *extra]


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, once per block
def test_backup_of_another_variant_stops_train_before_it_writes(inputs, tmp_path):
  # What a rerun with changed flags finds in the workdir of the run it did not finish.
  stale = efficientnet.build_model("efficientnet-b0", NUM_CLASSES,
                                   **dict(TINY, width_coefficient=0.2))
  stale.compile(optimizer=optimizers.TF1RMSProp(0.01, moving_average_decay=0.99), loss="mse")
  stale.optimizer.build(stale.trainable_variables)
  backup = tmp_path / "train" / "backup" / "latest.weights.h5"
  backup.parent.mkdir(parents=True)
  stale.save_weights(str(backup))
  message = _error(*_train_args(inputs, tmp_path / "train"))
  assert f"the backup {backup} does not fit" in message
  assert sorted(os.listdir(tmp_path / "train")) == ["backup"]


def test_eval_data_of_another_class_count_stops_train_before_it_trains(inputs, tmp_path):
  five = _convert(tmp_path, "five", 10, 4, num_classes=5)
  message = _error(*_train_args(inputs, tmp_path / "train", f"--eval_data={five}"))
  assert str(five) in message and "5 classes" in message and "3" in message
  assert not (tmp_path / "train").exists()


def test_unknown_flag_in_a_nested_flag_file_is_an_error_naming_it(tmp_path):
  # A recipe that includes another; a flag file given directly: tests/test_main.py. Flags are
  # parsed before main() runs, so nothing runs or is written.
  (tmp_path / "base.flags").write_text("--batch_size=8\n--images_per_clas=10\n")
  (tmp_path / "recipe.flags").write_text(
      f"--flagfile={tmp_path / 'base.flags'}\n--mode=filter\n--num_shards=2\n")
  flags.FLAGS.unparse_flags()
  with pytest.raises(flags.Error) as raised:
    flags.FLAGS(["main.py", f"--flagfile={tmp_path / 'recipe.flags'}"])
  assert "'images_per_clas'" in str(raised.value)
