"""``awpo.__all__`` is the public API: every name resolves, and ``import awpo`` alone loads none of the heavy stack."""
import subprocess
import sys

import awpo


def test_every_exported_name_resolves():
    missing = [name for name in awpo.__all__ if not hasattr(awpo, name)]
    assert not missing
    assert set(awpo.__all__) <= set(dir(awpo))


def test_import_awpo_is_lazy():
    code = "import sys, awpo; heavy = {'torch', 'transformers', 'vllm'} & set(sys.modules); print(sorted(heavy))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
