"""benchmarks/fashion_mnist_studies.py: the replication table from a hand-made studies.json, the
out-of-domain split against a NumPy restatement, and the split written to shards."""

import json
import pathlib
import statistics

import numpy as np
import pytest
from tests.benchmarks import script

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _studies():
  return script.load("fashion_mnist_studies")


def _row(lines, flag):
  (row,) = [line for line in lines if f"`--study {flag}`" in line]
  return [cell.strip() for cell in row.strip("|").split("|")]


HAND_MADE = {
    "machine": "test machine",
    "runs": {
        "seed1": {"teacher": {"validation": 0.80, "test": 0.79, "load_mean": 2.0},
                  "student_1": {"validation": 0.83, "test": 0.82, "load_mean": 3.0,
                                "pseudo_labels_kept": 0.84, "wall_seconds": 600},
                  "student_1_no_noise": {"validation": 0.82, "test": 0.815,
                                         "wall_seconds": 480},
                  "student_1_hard": {"validation": 0.835, "test": 0.825},
                  "robustness": {"teacher": {"mce": 100.0, "flip_rate": 0.07},
                                 "student_1": {"mce": 70.0, "flip_rate": 0.04},
                                 "student_1_no_noise": {"mce": 99.0, "flip_rate": 0.06}}},
        "seed2": {"teacher": {"validation": 0.81, "test": 0.80, "load_mean": 2.5},
                  "student_1": {"validation": 0.84, "test": 0.825, "load_mean": 2.5,
                                "pseudo_labels_kept": 0.85, "wall_seconds": 900},
                  "student_1_no_noise": {"validation": 0.845, "test": 0.81},
                  "student_1_hard": {"validation": 0.845, "test": 0.83},
                  "robustness": {"teacher": {"mce": 100.0, "flip_rate": 0.06},
                                 "student_1": {"mce": 74.0, "flip_rate": 0.045},
                                 "student_1_no_noise": {"mce": 97.0, "flip_rate": 0.05}}},
        "seed3": {"teacher": {"validation": 0.79, "test": 0.78},
                  "student_1": {"validation": 0.82, "test": 0.80}},
    },
}


def test_table_rows_against_the_hand_made_results():
  studies = _studies()
  lines = studies.table_lines(HAND_MADE, seeds=[1, 2, 3])
  # Round 1 over its teacher, all three seeds: means and extremes restated by hand.
  base = _row(lines, "base")
  val = [0.83, 0.84, 0.82]
  test = [0.82, 0.825, 0.80]
  assert base[2] == (f"student_1: {100 * statistics.mean(val):.2f} (82.00 - 84.00) / "
                     f"{100 * statistics.mean(test):.2f} (80.00 - 82.50)")
  gains = [0.82 - 0.79, 0.825 - 0.80, 0.80 - 0.78]
  val_gains = [0.03, 0.03, 0.03]
  assert base[4] == (f"{100 * statistics.mean(gains):+.2f} (+2.00 to +3.00) "
                     f"({100 * statistics.mean(val_gains):+.2f} (+3.00 to +3.00))")
  assert base[5] == "yes (every seed)"
  assert "84.50 (84.00 - 85.00)%" in base[6]  # kept pseudo labels of seeds 1 and 2
  # Noise: seeds 1-2 only (seed 3 has no control); test +0.5 and +1.5 points, validation +1.0
  # and -0.5: the mean is positive on both splits, not on every seed.
  noise = _row(lines, "noise")
  assert noise[4] == "+1.00 (+0.50 to +1.50) (+0.25 (-0.50 to +1.00))"
  assert noise[5] == "yes - 2 of 3 seeds so far"
  # Both arms over the seeds the study has done, not the student over three and its control
  # over two: seeds 1-2's student_1, validation 0.83 and 0.84, test 0.82 and 0.825.
  assert noise[2] == "student_1: 83.50 (83.00 - 84.00) / 82.25 (82.00 - 82.50)"
  # Hard labels beat soft on both splits of both seeds: the paper's direction does not hold.
  hard = _row(lines, "hard")
  assert hard[5] == "no (every seed) - 2 of 3 seeds so far"
  assert hard[4] == "-0.50 (-0.50 to -0.50) (-0.50 (-0.50 to -0.50))"
  # Robustness, lower is better: mCE 30 and 26 below the teacher's 100.
  (mce,) = [line for line in lines if "corruption error below its teacher" in line]
  cells = [c.strip() for c in mce.strip("|").split("|")]
  assert cells[2] == "student_1: test subset 72.0 (70.0 - 74.0)"
  assert cells[4] == "+28.0 (+26.0 to +30.0)"
  assert cells[5] == "yes (every seed) - 2 of 3 seeds so far"  # seed 3 has no robustness run
  (flip,) = [line for line in lines if "flip rate below" in line]
  assert "teacher: test subset 6.50 (6.00 - 7.00)" in flip
  # A study not run says so; the load line restates the mean of the runs that recorded one.
  assert _row(lines, "ood")[5] == "not run"
  assert lines[-1].startswith("Machine: test machine; 1-minute load average during the runs "
                              f"{statistics.mean([3.0, 2.5]):.1f} (2.5 - 3.0)")
  # Wall minutes: the base's iterate on student_1 (seeds 1-2), the control on its own arm.
  assert lines[-3] == ("Wall minutes a seed, each study's own runs (the base's shared): "
                       f"base {(600 + 900) / 2 / 60:.1f} (10.0 - 15.0); noise 8.0 (one seed).")


def test_direction_is_mixed_when_the_splits_disagree():
  studies = _studies()
  assert studies.direction({"validation": [0.01, 0.02], "test": [-0.01, -0.03]}) == (
      "mixed: validation yes, test no")
  assert studies.direction({"validation": [], "test": []}) == "not run"
  assert studies.direction({"test": [0.01]}) == "yes"  # one seed: no "every seed" claim


def test_ood_split_against_a_numpy_restatement():
  studies = _studies()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, size=1000)
  held_out = (5, 8)
  keep, new = studies.ood_relabel(labels, 10, held_out)
  # Restated: an image stays unless its class is held out; its new label is its old one less
  # the held-out classes below it.
  expected_keep = (labels != 5) & (labels != 8)
  expected_new = labels[expected_keep] - (labels[expected_keep] > 5) - (labels[expected_keep] > 8)
  np.testing.assert_array_equal(keep, expected_keep)
  np.testing.assert_array_equal(new, expected_new)
  assert sorted(set(new.tolist())) == list(range(8))


@pytest.mark.parametrize("held_out", [(10,), (3, 3), tuple(range(9)), (-1,)])
def test_ood_label_map_refuses_classes_that_do_not_fit(held_out):
  with pytest.raises(ValueError, match="do not fit 10 classes"):
    _studies().ood_label_map(10, held_out)


def test_relabelled_split_and_ood_count_on_shards(tmp_path, monkeypatch):
  """The written split keeps exactly the records of the classes that stay, renumbered, with
  their keys and image bytes; ood_kept counts held-out rows of a filter output by the hidden
  labels."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data import records  # pylint: disable=g-import-not-at-top
  studies = _studies()
  bench = studies._bench()  # pylint: disable=protected-access
  monkeypatch.setattr(bench, "ROOT", str(tmp_path))
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 10, size=60)
  source = tmp_path / "src"
  source.mkdir()
  shards = ["a-00000-of-00002.tfrecord", "a-00001-of-00002.tfrecord"]
  for i, shard in enumerate(shards):
    records.write_atomically(str(source / shard), [
        records.make_example(key=f"k{j}", image=f"img{j}".encode(), label=int(labels[j]))
        for j in range(i * 30, (i + 1) * 30)])
  manifest = {"class_names": [f"c{c}" for c in range(10)], "num_classes": 10,
              "splits": {"labeled": {"num_examples": 60, "shards": shards, "source": {},
                                     "class_counts": np.bincount(labels, minlength=10).tolist()}}}
  (source / "manifest.json").write_text(json.dumps(manifest))
  studies.relabelled_split("src", "out", (5, 8))
  written = json.loads((tmp_path / "out" / "manifest.json").read_text())
  keep, new = studies.ood_relabel(labels, 10, (5, 8))
  assert written["num_classes"] == 8
  assert written["class_names"] == ["c0", "c1", "c2", "c3", "c4", "c6", "c7", "c9"]
  (split,) = written["splits"].values()
  assert split["class_counts"] == np.bincount(new, minlength=8).tolist()
  found = []
  for shard in shards:
    for serialized in tf.data.TFRecordDataset(str(tmp_path / "out" / shard)).as_numpy_iterator():
      f = tf.train.Example.FromString(serialized).features.feature
      found.append((f[records.KEY].bytes_list.value[0].decode(),
                    f[records.ENCODED].bytes_list.value[0].decode(),
                    f[records.LABEL].int64_list.value[0]))
  indices = np.flatnonzero(keep)
  assert found == [(f"k{j}", f"img{j}", int(n)) for j, n in zip(indices, new)]
  # A filter output of 10 rows: keys 0-4 twice each (copies); the pool's hidden labels decide.
  (tmp_path / "unl").mkdir()
  records.write_atomically(str(tmp_path / "unl" / "u.tfrecord"), [
      records.make_example(key=f"k{j}", image=b"x", label=int(labels[j])) for j in range(60)])
  (tmp_path / "flt").mkdir()
  records.write_atomically(str(tmp_path / "flt" / "f.tfrecord"), [
      records.make_example(key=f"k{j % 5}", image=b"x", label=0) for j in range(10)])
  counted = studies.ood_kept("flt", "unl", (5, 8))
  held = [j for j in range(5) if labels[j] in (5, 8)]
  assert counted == {"unique": len(held), "rows": 2 * len(held), "all_rows": 10,
                     "with_copies_share": 2 * len(held) / 10,
                     "pool": int(np.isin(labels, [5, 8]).sum())}


def test_the_table_is_written_between_its_lines_and_nothing_else_changes():
  studies = _studies()
  text = f"# Title\n\nbefore\n{studies.TABLE_START}\nold row\n{studies.TABLE_END}\nafter\n"
  written = studies.with_table(text, ["| a |", "| b |"])
  assert written == (f"# Title\n\nbefore\n{studies.TABLE_START}\n| a |\n| b |\n"
                     f"{studies.TABLE_END}\nafter\n")
  assert studies.with_table(written, ["| c |"]) == (
      f"# Title\n\nbefore\n{studies.TABLE_START}\n| c |\n{studies.TABLE_END}\nafter\n")
  with pytest.raises(ValueError, match="README.md has no"):
    studies.with_table("no markers\n", ["| a |"], "README.md")


def test_the_docs_carry_the_table_lines():
  """README.md and benchmarks/RESULTS.md hold the lines the table is written between."""
  studies = _studies()
  for name in studies.DOCS:
    text = (ROOT / name).read_text()
    assert text.count(studies.TABLE_START) == 1 and text.count(studies.TABLE_END) == 1, name
