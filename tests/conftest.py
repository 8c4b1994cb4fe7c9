"""Top-level pytest configuration: the verl plugin tests run only where verl is installed, and every test gets the
markers that pick the inner loop (registered in pytest.ini).

``tests/verl_plugin`` needs verl 0.9.1, which lives in ``.venv-verl`` (its transformers pin clashes with the main
environment's). The main run skips the directory and ``tests/awpo/test_verl_plugin.py`` runs it in that venv.

Markers, applied here so that no test has to remember them:

- ``vllm``: builds or drives a vLLM engine (the ``tiny_vllm_engine`` fixture, or a module / test listed below that
  starts vLLM itself);
- ``bfcl``: scores with BFCL's checker in ``.venv-bfcl`` (a ``bfcl`` fixture or a BFCL module);
- ``cuda``: needs a GPU (named after CUDA, or skipped with a reason that names CUDA);
- ``slow``: takes more than about 20 s on the 2-core CI machine (listed below, measured with ``--durations``).

The inner loop, about a minute: ``pytest -m "not vllm and not bfcl and not slow"``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_VERL = importlib.util.find_spec("verl")
collect_ignore = [] if _VERL is not None and _VERL.origin is not None else ["verl_plugin"]

VLLM_FIXTURES = {"tiny_vllm_engine"}
VLLM_MODULES = {"test_trl_vllm.py"}
VLLM_TESTS = {
    "awpo/test_eval_cli.py::test_cli_end_to_end_with_a_tiny_model_on_vllm",
    "awpo/test_judge_engine.py::test_the_server_judge_against_a_real_vllm_server",  # opt-in: a real `vllm serve`
}
BFCL_FIXTURES = {"bfcl"}
BFCL_MODULES = {"test_bfcl_scoring.py", "test_bfcl_worker_safety.py", "test_outcome_vs_bfcl.py"}
BFCL_TESTS = {"awpo/test_eval_cli.py::test_scripted_runs_and_compare"}
# Whole modules, then single tests (node ids relative to tests/, parameters dropped), over ~20 s each: measured with
# `pytest -m "not vllm and not bfcl" --durations=30` on the 2-core machine while it also trained (so, pessimistic).
SLOW_MODULES = {
    "test_trl_ddp.py",  # spawns two processes that each import torch / transformers / TRL
    "test_triton_interpreted.py", "test_advantages_triton_interpreted.py",  # every kernel under TRITON_INTERPRET
    "test_compile_for_hopper.py",  # compiles each kernel for sm_90 with ptxas
    "test_benchmarks_smoke.py",
}
SLOW_FIXTURES: set[str] = set()  # fixtures whose tests are slow
SLOW_TESTS = {
    "awpo/test_verl_plugin.py::test_verl_plugin_suite_passes_in_its_venv",  # builds .venv-verl on first use
    "awpo/test_ablation.py::test_tiny_grid_end_to_end_resumes_an_interrupted_run",  # 230 s: trains a grid of runs
    "awpo/test_models.py::test_default_model_is_prepared_once_and_answers_sensibly",  # converts SmolLM2's GGUF
    "awpo/test_config.py::test_cli_reports_a_missing_model_without_a_traceback",  # a subprocess that imports it all
    "awpo/test_attention.py::test_flex_forward_matches_the_dense_mask_and_separate_sequences_on_cpu",  # flex compile
}


def _is_cuda(item) -> bool:
    if "cuda" in item.nodeid.lower():
        return True
    return any("cuda" in str(mark.kwargs.get("reason", "")).lower() for mark in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        module = path.name
        fixtures = set(getattr(item, "fixturenames", ()))  # includes the fixtures' own fixtures
        try:
            nodeid = path.relative_to(tests_dir).as_posix() + "::" + getattr(item, "originalname", item.name)
        except ValueError:
            nodeid = item.nodeid
        if fixtures & VLLM_FIXTURES or module in VLLM_MODULES or nodeid in VLLM_TESTS:
            item.add_marker(pytest.mark.vllm)
        if fixtures & BFCL_FIXTURES or module in BFCL_MODULES or nodeid in BFCL_TESTS:
            item.add_marker(pytest.mark.bfcl)
        if _is_cuda(item):
            item.add_marker(pytest.mark.cuda)
        if module in SLOW_MODULES or nodeid in SLOW_TESTS or fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
