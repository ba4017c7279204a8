"""noisy_student/package_path.py: imported by its installed name it puts the installed directory
on sys.path (as a Beam worker needs); imported by any other name it does nothing."""

import importlib.util
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = ROOT / "noisy_student" / "package_path.py"


def _import_as(name):
  spec = importlib.util.spec_from_file_location(name, SOURCE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_installed_name_puts_the_directory_above_noisy_student_first_on_sys_path(
    monkeypatch):
  home = os.path.dirname(os.path.dirname(os.path.abspath(SOURCE)))  # restated: above the package
  monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != home])
  module = _import_as("noisy_student_tf.noisy_student.package_path")
  assert module.INSTALLED_NAME == "noisy_student_tf.noisy_student.package_path"
  assert module.HOME == home == str(ROOT)
  assert sys.path[0] == home
  _import_as("noisy_student_tf.noisy_student.package_path")  # a second import adds nothing
  assert sys.path.count(home) == 1


def test_any_other_name_leaves_sys_path_alone(monkeypatch):
  home = str(ROOT)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != home])
  before = list(sys.path)
  _import_as("noisy_student.package_path")
  assert sys.path == before
