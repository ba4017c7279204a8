"""benchmarks/fashion_mnist.py: its recipe reading, its refusal to continue results of other
settings, and its true-label control."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from tests.benchmarks import script


ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fashion_mnist_benchmark():
  return script.load("fashion_mnist", "fashion_mnist_benchmark")


def test_benchmark_reads_a_recipe_as_main_py_parses_it(tmp_path, monkeypatch):
  """benchmarks/fashion_mnist.py derives its controls' budgets from --recipe's flags: through
  --flagfile includes, the last setting winning, as absl's parse of the same file gives them."""
  benchmark = _fashion_mnist_benchmark()
  monkeypatch.chdir(ROOT)  # includes are relative to the repository root, for both readers
  recipe = tmp_path / "longer.flags"
  recipe.write_text("--flagfile=recipes/fashion_mnist_demo.flags\n--student_epochs=180\n"
                    "--workdir=workdir/benchmark_3x\n")
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", f"--flagfile={recipe}"])
  for name in ("student_epochs", "workdir", "iterations", "unlabeled_batch_ratio",
               "warmup_epochs", "student_init"):
    parsed, written = flags.FLAGS[name].value, benchmark.recipe_value(str(recipe), name)
    # Per-round flags are lists: one entry here.
    assert (written.split(",") if isinstance(parsed, list) else type(parsed)(written)) == parsed
  assert flags.FLAGS.student_epochs == ["180"] and flags.FLAGS.iterations == 1  # override
  with pytest.raises(KeyError, match="--lr_decay_epochs"):
    benchmark.recipe_value(str(recipe), "lr_decay_epochs")  # main.py's default: set nowhere
  assert benchmark.lr_decay_epochs(str(recipe)) == flags.FLAGS.lr_decay_epochs
  recipe.write_text(recipe.read_text() + "--lr_decay_epochs=3.5\n")  # now set: the recipe's
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", f"--flagfile={recipe}"])
  assert benchmark.lr_decay_epochs(str(recipe)) == flags.FLAGS.lr_decay_epochs == 3.5


def test_benchmark_refuses_to_continue_results_of_other_settings(tmp_path):
  """A rerun skips the seeds results.json holds, so it continues only results of the same
  settings: an edited recipe at the same path is refused, naming what changed."""
  benchmark = _fashion_mnist_benchmark()
  recipe = tmp_path / "mine.flags"
  recipe.write_text("# a comment\n--flagfile=recipes/fashion_mnist_demo.flags\n"
                    "--student_epochs=90\n")
  results_name = str(tmp_path / "results.json")
  results = benchmark.load_results(results_name, str(recipe))
  assert results["recipe_settings"]["student_epochs"] == "90"
  assert results["recipe_settings"]["iterations"] == "1"  # the demo's, through its include
  results["seed0"] = {"top1": {"teacher": 0.8}}
  (tmp_path / "results.json").write_text(json.dumps(results))
  assert benchmark.load_results(results_name, str(recipe))["seed0"] == results["seed0"]
  recipe.write_text(recipe.read_text() + "--iterations=1\n")  # restates the demo's: same run
  assert benchmark.load_results(results_name, str(recipe))["seed0"] == results["seed0"]
  recipe.write_text(recipe.read_text().replace("=90", "=150"))
  with pytest.raises(SystemExit, match=r"results.json .*\(student_epochs: \['90'\] -> "
                     r"\['150'\]\): give another --workdir"):
    benchmark.load_results(results_name, str(recipe))
  # Written otherwise, the same run: main.py parses these as the recorded "--nocutout", "--flip"
  # and "--confidence_threshold=0.3", and --lr_decay_factor=0.97 as its default, left unset.
  settings = {**results["recipe_settings"], "student_epochs": "150"}
  results["recipe_settings"] = settings
  (tmp_path / "results.json").write_text(json.dumps(results))
  assert {"nocutout": "", "flip": "", "confidence_threshold": "0.3"}.items() <= settings.items()
  written = {name: value for name, value in settings.items()
             if name not in ("nocutout", "flip", "confidence_threshold")}
  written.update(cutout="false", flip="true", confidence_threshold="0.30", lr_decay_factor="0.97")
  recipe.write_text("".join(f"--{name}={value}\n" if value else f"--{name}\n"
                            for name, value in written.items()))
  assert benchmark.load_results(results_name, str(recipe))["seed0"] == results["seed0"]
  recipe.write_text(recipe.read_text().replace("--cutout=false", "--cutout"))
  with pytest.raises(SystemExit, match=r"\(cutout: False -> True\)"):
    benchmark.load_results(results_name, str(recipe))
  del results["recipe_settings"]  # written before settings were recorded: cannot be checked
  (tmp_path / "results.json").write_text(json.dumps(results))
  with pytest.raises(SystemExit, match="it recorded none"):
    benchmark.load_results(results_name, str(recipe))


def test_benchmark_true_label_copy_keeps_images_and_order_and_only_fixes_labels(tmp_path):
  """The benchmark's true-label control: the filter's shards record for record (keys, image
  bytes, copies, order) with each label replaced by the hidden true one, one-hot."""
  from data import records  # pylint: disable=g-import-not-at-top
  benchmark = _fashion_mnist_benchmark()
  truth = {f"k{i}".encode(): i % 3 for i in range(6)}
  unlabeled = tmp_path / "unlabeled"
  unlabeled.mkdir()
  records.write_atomically(str(unlabeled / "u-0.tfrecord"), [
      records.make_example(key=k, image=b"img" + k, label=v) for k, v in truth.items()])
  filtered = tmp_path / "filter"
  filtered.mkdir()
  shards = {"train-00000-of-00002.tfrecord": [b"k0", b"k1", b"k1"],
            "train-00001-of-00002.tfrecord": [b"k5", b"k2"]}
  for name, keys in shards.items():
    records.write_atomically(str(filtered / name), [
        records.make_example(key=k, image=b"img" + k, label=2, probabilities=[0.1, 0.2, 0.7],
                             confidence=0.7) for k in keys])
  (filtered / "manifest.json").write_text(json.dumps({"num_classes": 3, "splits": {"train": {
      "num_examples": 5, "class_counts": [0, 0, 5], "shards": sorted(shards),
      "source": {"type": "filter"}}}}))
  out = benchmark.true_label_copy(str(filtered), str(unlabeled), str(tmp_path / "true"), 3)
  for name, keys in shards.items():
    got = [tf.train.Example.FromString(r).features.feature
           for r in tf.data.TFRecordDataset(str(tmp_path / "true" / name)).as_numpy_iterator()]
    assert [f[records.KEY].bytes_list.value[0] for f in got] == keys
    assert [f[records.ENCODED].bytes_list.value[0] for f in got] == [b"img" + k for k in keys]
    assert [f[records.LABEL].int64_list.value[0] for f in got] == [truth[k] for k in keys]
    for feature, key in zip(got, keys):
      np.testing.assert_array_equal(feature[records.PROBABILITIES].float_list.value,
                                    np.eye(3)[truth[key]])
  manifest = json.loads((tmp_path / "true" / "manifest.json").read_text())
  assert manifest["splits"]["train"]["class_counts"] == [1, 2, 2]  # k0; k1 k1; k5 k2
  assert out == str(tmp_path / "true")
