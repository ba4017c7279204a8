"""Writes flags.md from main.py's flag definitions: `python scripts/flags_md.py > flags.md`.

flags.md and `--help` come from the same source (main.flags_markdown, main.help_text);
tests/test_main.py fails when flags.md and main.py disagree: rerun this after changing a flag.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main  # noqa: E402


def main_():
  sys.stdout.write(main.flags_markdown())


if __name__ == "__main__":
  main_()
