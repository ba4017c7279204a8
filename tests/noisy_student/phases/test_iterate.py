"""noisy_student/phases/iterate.py's own pieces: its round table and its settings check on resume
(tests/integration/test_iterate.py runs it through main.py)."""

import json

import pytest



def test_iterate_table_gives_each_rounds_change_over_its_own_teacher_and_round_0():
  """The table iterate prints and saves: the benchmark's seed-0 figures, worked by hand."""
  from noisy_student.phases import iterate  # pylint: disable=g-import-not-at-top
  rounds = [{"round": 0, "role": "teacher", "model": "efficientnet-b0", "top1": 0.816,
             "eval_image_size": 32},
            {"round": 1, "role": "student", "model": "efficientnet-b0", "top1": 0.8261,
             "eval_image_size": 32},
            {"round": 2, "role": "student", "model": "efficientnet-b1", "top1": 0.8265,
             "eval_image_size": 48}]
  header, *rows = iterate.summary_table(rounds)
  assert header.split() == ["round", "role", "model", "size", "top-1", "%", "vs", "teacher",
                            "vs", "round", "0"]
  assert [row.split() for row in rows] == [
      ["0", "teacher", "efficientnet-b0", "32", "81.60"],
      # Round 2 against its own teacher (round 1: +0.04), and against round 0 (+1.05).
      ["1", "student", "efficientnet-b0", "32", "82.61", "+1.01", "+1.01"],
      ["2", "student", "efficientnet-b1", "48", "82.65", "+0.04", "+1.05"]]
  # Columns line up under the header.
  assert {len(row) for row in rows[1:]} == {len(header)}


def test_iterate_refuses_to_resume_a_workdir_under_other_settings(tmp_path, caplog):
  """A rerun may continue a run (same settings, or more rounds) but not reuse the finished
  phases of a run with other settings; a workdir from before the settings file only warns."""
  from noisy_student.phases import iterate  # pylint: disable=g-import-not-at-top
  b0, b1 = ({"student": {"model": m, "unlabeled_batch_ratio": 1.0}} for m in
            ("efficientnet-b0", "efficientnet-b1"))
  settings = {"teacher_config": {"epochs": 100, "seed": 0}, "rounds": [b0],
              "filter_args": {"threshold": 0.3}, "labeled_data": "data/labeled"}
  iterate.check_settings(str(tmp_path), settings)
  iterate.check_settings(str(tmp_path), settings)  # the same command again: resumes
  more_rounds = dict(settings, rounds=[b0, b1])
  iterate.check_settings(str(tmp_path), more_rounds)
  iterate.check_settings(str(tmp_path), settings)  # fewer rounds: a prefix of the run
  recorded = json.loads((tmp_path / iterate.SETTINGS).read_text())
  assert recorded["rounds"] == [b0, b1]
  changed = dict(settings, teacher_config={"epochs": 20, "seed": 0},
                 filter_args={"threshold": 0.5})
  with pytest.raises(ValueError) as raised:
    iterate.check_settings(str(tmp_path), changed)
  message = str(raised.value)
  assert str(tmp_path) in message
  assert "teacher_config.epochs: 100 -> 20" in message
  assert "filter_args.threshold: 0.3 -> 0.5" in message and "seed" not in message
  with pytest.raises(ValueError, match=r"round 1 student.model: 'efficientnet-b0' -> "
                     r"'efficientnet-b2'"):
    iterate.check_settings(str(tmp_path), dict(settings, rounds=[
        {"student": {"model": "efficientnet-b2", "unlabeled_batch_ratio": 1.0}}]))
  with pytest.raises(ValueError, match=r"round 2 student.unlabeled_batch_ratio: 1.0 -> 2.0"):
    iterate.check_settings(str(tmp_path), dict(settings, rounds=[
        b0, {"student": {"model": "efficientnet-b1", "unlabeled_batch_ratio": 2.0}}]))
  assert json.loads((tmp_path / iterate.SETTINGS).read_text()) == recorded  # left as it was

  older = tmp_path / "older"
  (older / "iter_0" / "train").mkdir(parents=True)
  (older / "iter_0" / "train" / iterate.DONE).write_text("{}")
  with caplog.at_level("WARNING"):
    iterate.check_settings(str(older), settings)
  assert "without checking" in caplog.text
  assert json.loads((older / iterate.SETTINGS).read_text()) == settings
