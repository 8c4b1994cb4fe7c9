"""Top-level pytest configuration: the verl plugin tests run only where verl is installed.

``tests/verl_plugin`` needs verl 0.9.1, which lives in ``.venv-verl`` (its transformers pin clashes with the main
environment's). The main run skips the directory and ``tests/awpo/test_verl_plugin.py`` runs it in that venv.
"""
import importlib.util

_VERL = importlib.util.find_spec("verl")
collect_ignore = [] if _VERL is not None and _VERL.origin is not None else ["verl_plugin"]
