"""Top-level pytest configuration: the verl plugin tests run only where verl is installed, and every test gets the
markers that pick the inner loop (registered in pytest.ini).

``tests/verl_plugin`` needs verl 0.9.1, which lives in ``.venv-verl`` (its transformers pin clashes with the main
environment's). The main run skips the directory and ``tests/awpo/test_verl_plugin.py`` runs it in that venv.

Markers (registered in pytest.ini): a test or module carries ``vllm``, ``bfcl`` and ``slow`` itself
(``pytestmark`` or a decorator, so that renaming it keeps its mark); here they are added from what a
test uses:

- ``vllm``: builds or drives a vLLM engine (the ``tiny_vllm_engine`` fixture);
- ``bfcl``: scores with BFCL's checker in ``.venv-bfcl`` (the ``bfcl`` fixture);
- ``cuda``: needs a GPU (named after CUDA, or skipped with a reason that names CUDA);
- ``slow``: takes more than about 20 s on the 2-core CI machine.

The inner loop, under a minute: ``make test-fast`` (``pytest -m "not vllm and not bfcl and not slow" -n 2``).
"""
from __future__ import annotations

import importlib.util

import pytest

_VERL = importlib.util.find_spec("verl")
collect_ignore = [] if _VERL is not None and _VERL.origin is not None else ["verl_plugin"]

VLLM_FIXTURES = {"tiny_vllm_engine"}
BFCL_FIXTURES = {"bfcl"}


def _is_cuda(item) -> bool:
    if "cuda" in item.nodeid.lower():
        return True
    return any("cuda" in str(mark.kwargs.get("reason", "")).lower() for mark in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))  # includes the fixtures' own fixtures
        if fixtures & VLLM_FIXTURES:
            item.add_marker(pytest.mark.vllm)
        if fixtures & BFCL_FIXTURES:
            item.add_marker(pytest.mark.bfcl)
        if _is_cuda(item):
            item.add_marker(pytest.mark.cuda)
