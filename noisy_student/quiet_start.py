"""Imports TensorFlow and Keras without the start-up lines a user must read past.

Importing this module (main.py does, before anything imports TensorFlow) imports both with
file descriptor 2 pointed at a temporary file, then writes what they printed to the real stderr
less the lines of `NOISE`: TensorFlow's C++ start-up lines, written before absl's log is
initialised, so that no TF_CPP_MIN_LOG_LEVEL, ABSL_MIN_LOG_LEVEL or GLOG_minloglevel silences
them (measured: tests/noisy_student/test_quiet_start.py), and the lines of a machine without a
GPU. Any other line is passed on, in order: a GPU or TPU machine's own lines stay. The same
patterns drop TensorFlow's and Keras' Python log records and warnings that say nothing to a user
(`install_filters`), for the whole process.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

# One pattern a line. The cuInit line is dropped only with error 303, what a machine without a
# CUDA driver gives; a GPU machine's failure has another code and stays.
NOISE = tuple(re.compile(pattern) for pattern in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine, GPU will not be used",
    r"failed call to cuInit: .*\(303\)",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler",
    r"TFRecordDataset `buffer_size` is unspecified",
    # SavedModel writing (export): renamed resource inputs, sharding and fingerprint chatter.
    r"contains input name\(s\) .* with unsupported characters which will be renamed",
    r"Sharding callback duration",
    r"Writing fingerprint to",
    r"^Assets written to: ",
    # Apache Beam's import and in-process runner (beam mode): clients it does not use.
    r"apitools not found, and bigquery client libraries are not available",
    r"No module named google\.cloud\.bigquery_storage_v1",
    r"Creating state cache with size",
))
# Python warnings (message start) raised by TensorFlow or Keras, not by anything a user did: a
# tf.data.Dataset given to fit, which shuffles in its own pipeline.
NOISY_WARNINGS = (r"`shuffle=True` was passed, but will be ignored since the data `x` was "
                  r"provided as a tf.data.Dataset",)


# The installed command's name (pyproject.toml's [project.scripts]); anything else is main.py.
COMMAND = "noisy-student"


def command_name():
  """What the user typed to run this process, for error lines: `noisy-student` or main.py."""
  return COMMAND if os.path.basename(sys.argv[0] if sys.argv else "") == COMMAND else "main.py"


def is_noise(line):
  return any(pattern.search(line) for pattern in NOISE)


@contextlib.contextmanager
def filtered_stderr():
  """Everything written to file descriptor 2 inside the block (C++ and Python alike) reaches
  stderr when the block ends, less the lines of NOISE. Without a usable descriptor 2 the block
  runs unfiltered."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):
    yield
    return
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
      kept = "".join(line for line in lines if not is_noise(line))
      if kept:
        os.write(2, kept.encode("utf-8"))


class _DropNoise(logging.Filter):

  def filter(self, record):
    try:
      return not is_noise(record.getMessage())
    except Exception:  # pylint: disable=broad-except  (a record that cannot format is not noise)
      return True


_FILTER = _DropNoise()


def install_filters():
  """Drops NOISE from Python logging (every handler of the root logger, absl's included, and
  records logged before absl installs its handler) and NOISY_WARNINGS from `warnings`."""
  for message in NOISY_WARNINGS:
    warnings.filterwarnings("ignore", message=message)
  handlers = list(logging.getLogger().handlers)
  with contextlib.suppress(ImportError):
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    handlers.append(absl_logging.get_absl_handler())
  for handler in handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
  for name in ("tensorflow", "absl"):  # records dropped where they are logged, whatever handler
    if _FILTER not in logging.getLogger(name).filters:
      logging.getLogger(name).addFilter(_FILTER)


def import_tensorflow():
  """Imports TensorFlow and Keras (and lists the devices, where a machine without a GPU says
  so) inside `filtered_stderr`; returns tensorflow."""
  with filtered_stderr():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import keras  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    tf.config.list_physical_devices()
  install_filters()
  return tf


import_tensorflow()
