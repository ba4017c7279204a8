"""Only for Apache Beam's `--setup_file=setup.py`, which builds the source distribution that
Dataflow workers install; everything is configured in pyproject.toml."""

import setuptools

setuptools.setup()
