"""Constants shared by the spec (`reference.py`) and the fast paths: a leaf module, importing nothing of
awpo_kernels, so that no fast path has to import the reference for them."""
from __future__ import annotations

IGNORE_INDEX = -100  # the target id of positions outside the loss (TRL's and torch's cross-entropy convention)
