"""Fixtures of the verl plugin tests. They run in .venv-verl (verl 0.9.1), never in the main env.

``tests/awpo/test_verl_plugin.py`` builds that venv and runs this directory there; ``tests/conftest.py``
keeps the main run from collecting it (the main env has no verl). Helpers: ``verl_helpers.py``.
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from verl_helpers import build_tokenizer, make_batch, score_with_naive_manager  # noqa: E402

import awpo.integrations.verl  # noqa: E402,F401  (registers the estimators, the loss and the shim)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def scored_batch(tokenizer):
    """build(**make_batch options) -> (scored DataProto, completion text per row)."""
    def build(**kwargs):
        batch, texts = make_batch(tokenizer, **kwargs)
        return score_with_naive_manager(batch, tokenizer), texts
    return build
