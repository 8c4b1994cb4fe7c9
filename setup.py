from setuptools import setup

# The metadata lives in pyproject.toml; this shim serves tools that still call setup.py.
setup()
