"""Where the project's modules are once `pip install .` installed them, for Beam's workers.

The install puts main.py, data/, efficientnet/, noisy_student/ and recipes/ under one directory,
site-packages/noisy_student_tf/ (nothing generic such as `data` lands in site-packages itself),
and the modules import each other by their own names (`from data import pipeline`). The
`noisy-student` command puts that directory on sys.path itself (main.py). A Beam worker that
installed the project (`--setup_file`, `--extra_package`) imports this module by its installed
name first (`--beam_plugins=INSTALLED_NAME`, which beam_pipeline adds then); after that it can
unpickle the pipeline's functions, which name their modules `noisy_student...` and `data...`.
Imported by any other name (from a clone), it does nothing.
"""

import os
import sys

INSTALLED_NAME = "noisy_student_tf.noisy_student.package_path"
HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == INSTALLED_NAME and HOME not in sys.path:
  sys.path.insert(0, HOME)
