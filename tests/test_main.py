"""main.py's flags: parse-time errors, the default data set's message, flag choices, flags.md,
--help, READ_BY against the flags each mode reads, iterate's per-round flags, and the rule that
only main.py reads flags."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags

import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args):
  """Runs main.py's mode in this process (TensorFlow is imported once for all tests)."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", *args])
  main.main(["main.py"])


@pytest.mark.parametrize("bad_flag", ["--model=efficientnet-b9", "--confidence_threshold=1.5",
                                      "--confidence_threshold=-0.1", "--no_such_flag=1",
                                      "--pseudo_labels=medium"])
def test_invalid_flags_fail_at_parse_time(bad_flag):
  flags.FLAGS.unparse_flags()
  with pytest.raises(flags.Error):
    flags.FLAGS(["main.py", bad_flag])


@pytest.mark.parametrize("args, named", [
    (["--mode=iterate", "--epochs=1", "--labeled_data=workdir/fashion_mnist/labeled"],
     "--labeled_data=workdir/fashion_mnist/labeled"),
    (["--mode=eval", "--checkpoint=runs/x", "--eval_data=workdir/fashion_mnist/test"],
     "--eval_data=workdir/fashion_mnist/test"),
    (["--mode=predict", "--checkpoint=runs/x", "--output=o",
      "--unlabeled_data=./workdir/fashion_mnist/unlabeled/"],
     "--unlabeled_data=./workdir/fashion_mnist/unlabeled/"),
])
def test_a_missing_default_data_set_is_reported_with_how_to_make_it(tmp_path, monkeypatch, args,
                                                                      named):
  monkeypatch.chdir(tmp_path)  # a fresh clone: nothing converted yet
  with pytest.raises(SystemExit, match=re.escape(named) + r" does not exist\. It is part of the "
                     r"default data set, which `bash scripts/demo\.sh` converts"):
    run(*args)
  # Other data, missing, is reported by the phase as before: not as the default data set.
  with pytest.raises(SystemExit) as raised:
    run("--mode=predict", "--checkpoint=runs/x", "--output=o", f"--unlabeled_data={tmp_path}/u")
  assert "default data set" not in str(raised.value)


@pytest.mark.parametrize("mode, needed", [("train", "labeled_data"), ("eval", "eval_data"),
                                           ("predict", "unlabeled_data"), ("convert", "input")])
def test_data_flags_have_no_demo_default(mode, needed):
  """A run on other data that leaves out a data flag must not read the demo's Fashion-MNIST."""
  with pytest.raises(SystemExit, match=f"--mode={mode} needs --{needed}"):
    run(f"--mode={mode}", "--checkpoint=runs/x", "--output=o", "--epochs=1")
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py"])
  assert all(flags.FLAGS[name].value is None
             for name in ("labeled_data", "unlabeled_data", "eval_data", "input"))


def test_a_missing_flag_is_one_line_naming_it_not_a_page_of_help():
  # As a user runs it: absl's app.run printed the whole flag help for an app.UsageError.
  result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--mode=train",
                           "--labeled_data=x", "--eval_data="], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      "main.py --mode=train: error: --epochs or --train_steps is needed: the run's length in "
      "passes over the labeled data or in steps (a recipe sets one)")
  assert "--base_learning_rate" not in result.stderr + result.stdout


@pytest.mark.parametrize("bad_flags, message", [
    (["--final_learning_rate=0"], "above 0 and below --base_learning_rate=0.016, got 0"),
    (["--final_learning_rate=0.016"], "below --base_learning_rate=0.016, got 0.016"),
    (["--base_learning_rate=0.004", "--final_learning_rate=0.008"],
     "below --base_learning_rate=0.004, got 0.008"),
    (["--final_learning_rate=0.001", "--lr_decay_factor=1"], "--lr_decay_factor between 0 and 1"),
])
def test_a_final_learning_rate_the_schedule_cannot_reach_fails_at_parse_time(bad_flags, message):
  # Before: 0 and the peak itself crashed in math.log / a division by zero, and a rate above the
  # peak raised "decay_epochs must be positive", when the run (or iterate's student) started.
  flags.FLAGS.unparse_flags()
  with pytest.raises(flags.Error, match=re.escape(message)):
    flags.FLAGS(["main.py", "--mode=iterate", *bad_flags])


def test_a_beam_option_with_commas_passes_whole_in_double_quotes():
  # As docs/scale.md tells Dataflow users (--experiments takes comma-separated values).
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main.py", '--beam_options=--runner=DataflowRunner,'
               '"--experiments=use_runner_v2,shuffle_mode=service",--project=p'])
  assert flags.FLAGS.beam_options == ["--runner=DataflowRunner",
                                      "--experiments=use_runner_v2,shuffle_mode=service",
                                      "--project=p"]
  flags.FLAGS.unparse_flags()


def test_unknown_flag_in_a_flagfile_names_it(tmp_path):
  flagfile = tmp_path / "bad.flags"
  flagfile.write_text("--mode=eval\n--confidence_treshold=0.2\n")
  result = subprocess.run([sys.executable, str(ROOT / "main.py"), f"--flagfile={flagfile}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode != 0 and "confidence_treshold" in result.stderr


def test_flag_choices_are_the_modules_own():
  """Every enum flag offers exactly what the module acting on it accepts."""
  from data import convert  # pylint: disable=g-import-not-at-top
  from data import pipeline  # pylint: disable=g-import-not-at-top
  from noisy_student import checkpoints  # pylint: disable=g-import-not-at-top
  from noisy_student import distribute  # pylint: disable=g-import-not-at-top
  from noisy_student.training import losses  # pylint: disable=g-import-not-at-top
  from noisy_student.phases import robustness  # pylint: disable=g-import-not-at-top
  from noisy_student.phases import train  # pylint: disable=g-import-not-at-top
  choices = lambda name: tuple(flags.FLAGS[name].parser.enum_values)
  assert choices("source") == convert.SOURCES
  assert choices("strategy") == distribute.STRATEGIES
  assert choices("normalization") == train.NORMALIZATIONS
  assert choices("mixed_precision") == tuple(distribute.PRECISION_POLICIES)
  assert choices("pseudo_labels") == pipeline.PSEUDO_LABELS == losses.PSEUDO_LABEL_MODES
  assert choices("checkpoint_format") == checkpoints.FORMATS
  assert main.ROBUSTNESS == robustness.KINDS
  assert set(choices("corruption_table")) - {"auto"} == set(corruptions_tables())
  assert choices("mode") == tuple(main._MODES)  # pylint: disable=protected-access


def corruptions_tables():
  from data import corruptions  # pylint: disable=g-import-not-at-top
  return corruptions.SEVERITY_TABLES


def test_flags_md_documents_exactly_main_flags():
  documented = {}
  for line in (ROOT / "flags.md").read_text().splitlines():
    match = re.match(r"\| `--(\w+)` \| [^|]+ \| `([^`]*)` \|", line)
    if match:
      documented[match.group(1)] = match.group(2)
  defined = {f.name: f for f in flags.FLAGS.get_flags_for_module(main)}
  assert sorted(documented) == sorted(defined)
  for name, default in documented.items():
    value = defined[name].default
    value = ",".join(value) if isinstance(value, list) else str(value)
    assert default in (value, "(empty)" if not value else value), name


def test_flags_md_is_what_scripts_flags_md_writes(capsys):
  """Every word of it, help texts included (the test above sees names and defaults only)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("flags_md", ROOT / "scripts" / "flags_md.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  script.main_()
  assert capsys.readouterr().out == (ROOT / "flags.md").read_text(), (
      "flags.md is out of date: python scripts/flags_md.py > flags.md")


def _imports(path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f"{node.module}.{a.name}" for a in node.names)


def test_layers_point_one_way():
  for package, forbidden in (("efficientnet", ("noisy_student", "data")),
                             ("data", ("noisy_student", "efficientnet")),
                             ("noisy_student", ())):
    for path in (ROOT / package).rglob("*.py"):  # sub-packages too
      imported = set(_imports(path))
      assert "absl.flags" not in imported, f"{path} reads flags; only main.py may"
      for name in imported:
        top = name.split(".")[0]
        assert top not in forbidden, f"{path} imports {name}"


@pytest.mark.parametrize("teacher_noise", [True, False])
def test_iterate_teacher_noise_off_leaves_the_students_noised(monkeypatch, teacher_noise):
  """--noteacher_noise: the first teacher trains without RandAugment, Cutout, dropout or
  stochastic depth; the students (as iterate receives them) keep the noise flags."""
  from noisy_student.phases import iterate  # pylint: disable=g-import-not-at-top
  seen = {}
  monkeypatch.setattr(iterate, "iterate", lambda teacher, rounds, workdir, **kwargs: (
      seen.update(teacher=teacher, rounds=rounds), {"table": [], "rounds": []})[1])
  run("--mode=iterate", "--labeled_data=unused", "--iterations=1", "--epochs=3",
      "--student_epochs=2", "--randaugment_layers=2", "--randaugment_magnitude=9", "--cutout",
      "--dropout_rate=0.3", "--survival_prob=0.7", "--strategy=cpu", "--workdir=unused",
      f"--{'' if teacher_noise else 'no'}teacher_noise")
  teacher, (only,) = seen["teacher"], seen["rounds"]
  student = only.student
  noised = dict(randaugment_layers=2, cutout=True, dropout_rate=0.3, survival_prob=0.7)
  assert {k: getattr(student, k) for k in noised} == noised
  assert student.epochs == 2 and teacher.epochs == 3
  assert {k: getattr(teacher, k) for k in noised} == (noised if teacher_noise else dict(
      randaugment_layers=0, cutout=False, dropout_rate=0.0, survival_prob=1.0))


def test_iterate_per_round_flags_give_each_round_its_values(monkeypatch):
  """Per-round lists: one entry a round, one value for every round, 'none' for no fine-tune;
  a fine-tune is the round's student at its size, length and frozen blocks."""
  from noisy_student.phases import iterate  # pylint: disable=g-import-not-at-top
  seen = {}
  monkeypatch.setattr(iterate, "iterate", lambda teacher, rounds, workdir, **kwargs: (
      seen.update(rounds=rounds), {"table": [], "rounds": []})[1])
  run("--mode=iterate", "--labeled_data=unused", "--workdir=unused", "--iterations=3",
      "--train_steps=10", "--strategy=cpu", "--image_size=32", "--unlabeled_batch_ratio=1",
      "--student_models=efficientnet-b0,efficientnet-b1,efficientnet-b1",
      "--student_image_sizes=32,40,48", "--unlabeled_batch_ratios=2,2,4",
      "--student_train_steps=20", "--student_init=scratch,teacher,teacher",
      "--finetune_image_size=none,0,64", "--finetune_steps=5", "--freeze_blocks=3")
  rounds = seen["rounds"]
  assert [(r.student.model, r.student.image_size, r.student.unlabeled_batch_ratio, r.init)
          for r in rounds] == [("efficientnet-b0", 32, 2.0, "scratch"),
                               ("efficientnet-b1", 40, 2.0, "teacher"),
                               ("efficientnet-b1", 48, 4.0, "teacher")]
  assert {r.student.train_steps for r in rounds} == {20}
  assert [r.finetune is None for r in rounds] == [True, True, False]
  tune = rounds[2].finetune
  assert (tune.image_size, tune.train_steps, tune.freeze_blocks, tune.model) == (
      64, 5, 3, "efficientnet-b1")
  with pytest.raises(SystemExit, match="--unlabeled_batch_ratios lists 2 values for "
                     "--iterations=3"):
    run("--mode=iterate", "--labeled_data=unused", "--workdir=unused", "--iterations=3",
        "--train_steps=10", "--strategy=cpu", "--unlabeled_batch_ratios=2,4")
  with pytest.raises(SystemExit, match="round 1 fine-tunes at 64: give exactly one of"):
    run("--mode=iterate", "--labeled_data=unused", "--workdir=unused", "--iterations=1",
        "--train_steps=10", "--strategy=cpu", "--finetune_image_size=64")


def test_every_flag_says_which_modes_read_it():
  defined = {f.name for f in flags.FLAGS.get_flags_for_module(main)}
  assert set(main.FLAG_MODES) == defined
  assert all(set(modes) <= set(main.MODES) for modes in main.FLAG_MODES.values())


def test_command_line_flags_are_told_apart_from_recipe_lines():
  argv = ["main.py", "--flagfile=recipes/x.flags", "--mode=eval", "--nobalance", "--seed", "3",
          "-epochs=2", "--", "--top_k=1"]
  assert main.command_line_flags(argv) == ["mode", "balance", "seed", "epochs"]


def test_a_flag_the_mode_does_not_read_is_an_error_unless_a_recipe_sets_it(tmp_path):
  def main_py(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)

  result = main_py("--mode=eval", "--checkpoint=runs/x", "--eval_data=e", "--epochs=3",
                   "--top_k=5")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert ("--epochs is not read by --mode=eval (it is read by --mode=train|finetune|iterate); "
          "--top_k is not read by --mode=eval (it is read by --mode=predict|beam|iterate)"
          ) in result.stderr
  # The SVHN teacher recipe sets training flags; convert ignores them (it fails later, on its
  # missing input, not on the recipe).
  result = main_py(f"--flagfile={ROOT / 'recipes/svhn_teacher.flags'}", "--mode=convert",
                   f"--input={tmp_path / 'missing'}", f"--output={tmp_path / 'out'}")
  assert result.returncode != 0 and "is not read by" not in result.stderr
  assert "missing" in result.stderr


def _listed_flags(help_text):
  return {m.group(1) for m in re.finditer(r"^  --(\w+) \(", help_text, re.MULTILINE)}


def test_help_lists_the_modes_and_every_flag_and_one_modes_flags_with_mode():
  """--help exits 0 with main.py's flags only (none of absl's or TensorFlow's), by section; with
  --mode=MODE exactly the flags READ_BY says that mode reads."""
  def main_py(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                          text=True, timeout=300)
  full = main_py("--help")
  assert full.returncode == 0, full.stderr
  defined = {f.name for f in flags.FLAGS.get_flags_for_module(main)}
  assert _listed_flags(full.stdout) == defined
  assert all(f"  {mode} " in full.stdout for mode in main.MODES)
  for mode in ("filter", "iterate"):
    one = main_py("--mode", mode, "--help")
    assert one.returncode == 0, one.stderr
    assert _listed_flags(one.stdout) == {n for n, modes in main.FLAG_MODES.items()
                                         if mode in modes}
  bad = main_py("--help", "--mode=fliter")
  assert bad.returncode and "--mode=fliter is not a mode" in bad.stderr


# What each mode is run with by the flag-read recording below: enough flags to take every branch
# that reads a flag (a teacher checkpoint for iterate, a table for predict, robustness for eval).
_MODE_RUNS = {
    "convert": [["--input=x", "--output=o", "--labeled_per_class=1"]],
    "train": [["--labeled_data=l", "--workdir=w", "--train_steps=1"]],
    "finetune": [["--labeled_data=l", "--workdir=w", "--train_steps=1", "--init_checkpoint=c"]],
    "predict": [["--unlabeled_data=u", "--checkpoint=c", "--output=o",
                 "--predictions_format=jsonl"]],
    "filter": [["--unlabeled_data=u", "--predictions=p", "--output=o"]],
    "eval": [["--eval_data=e", "--checkpoint=c", "--output=o", "--robustness=perturbations"],
             ["--eval_data=e", "--checkpoint=c", "--workdir=w"]],
    "iterate": [["--labeled_data=l", "--workdir=w", "--train_steps=1", "--teacher_checkpoint=t"],
                ["--labeled_data=l", "--workdir=w", "--train_steps=1", "--teacher_epochs=1",
                 "--finetune_image_size=64", "--finetune_steps=1"]],
    "beam": [["--unlabeled_data=u", "--checkpoint=c", "--output=o"]],
    "export": [["--checkpoint=c", "--output=o"]],
}


def test_each_mode_reads_exactly_the_flags_its_table_says(monkeypatch):
  """READ_BY, which the strict check and --help use, against the flags each mode's code reads:
  every mode run with its phases replaced by mocks (only main.py reads flags: the phases take
  arguments), every flag access recorded. Each run also passes --dry_run where the mode reads
  it, so both paths of train and iterate are read."""
  from unittest import mock  # pylint: disable=g-import-not-at-top
  from noisy_student.phases import export, prediction_table  # pylint: disable=g-import-not-at-top
  for module, names in (
      (main.convert, ["convert"]), (main.subsets, ["split_labeled"]),
      (main.train, ["train", "dry_run"]), (main.predict, ["predict_phase"]),
      (prediction_table, ["save_prediction_table"]),
      (main.filter_phase, ["filter_and_balance_phase"]),
      (main.evaluate, ["eval_phase"]), (main.robustness, ["robustness_phase"]),
      (main.iterate, ["iterate", "plan_iterate"]), (export, ["export_phase"]),
      (main.checkpoints, ["load_model", "eval_preprocessing", "load_run_config",
                          "load_class_names"]),
      (main.distribute, ["build_strategy"]), (main.manifest, ["load_manifest", "class_names_for"]),
      (main.filter_balance, ["return_freed_memory_promptly"])):
    for name in names:
      monkeypatch.setattr(module, name, mock.MagicMock(name=name))
  main.checkpoints.load_run_config.return_value = None  # a checkpoint without its run
  # eval_phase calls back for the robustness results (the flags they read).
  main.evaluate.eval_phase.side_effect = lambda *a, extra=None, **k: (
      extra and extra({}), mock.MagicMock())[1]
  beam = mock.MagicMock()
  monkeypatch.setitem(sys.modules, "noisy_student.phases.beam_pipeline", beam)
  monkeypatch.setattr("noisy_student.phases.beam_pipeline", beam, raising=False)
  read = set()
  get_attr, get_item = flags.FlagValues.__getattr__, flags.FlagValues.__getitem__
  monkeypatch.setattr(flags.FlagValues, "__getattr__",
                      lambda self, name: (read.add(name), get_attr(self, name))[1])
  monkeypatch.setattr(flags.FlagValues, "__getitem__",
                      lambda self, name: (read.add(name), get_item(self, name))[1])
  monkeypatch.setattr(main, "_report_plan", lambda plan: None)
  monkeypatch.setattr(main, "check_main_input", lambda: None)
  defined = {f.name for f in flags.FLAGS.get_flags_for_module(main)}
  for mode, runs in _MODE_RUNS.items():
    seen = set()
    for args in runs:
      for dry in ([], ["--dry_run"]) if mode in main.FLAG_MODES["dry_run"] else ([],):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["main.py", f"--mode={mode}", "--strategy=cpu", *args, *dry])
        read.clear()
        main._MODES[mode]()  # pylint: disable=protected-access
        seen |= read & defined
    declared = {name for name, modes in main.FLAG_MODES.items() if mode in modes}
    # main() itself reads --mode for every mode.
    assert seen | {"mode"} == declared, (
        f"--mode={mode}: read but not in READ_BY: {sorted(seen - declared)}; in READ_BY but "
        f"never read: {sorted(declared - seen - {'mode'})}")
