"""One Python version, stated once and enforced everywhere: pyproject.toml, the Makefile, the README,
and the interpreter running the suite."""
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION = "3.11"


def test_one_python_version_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == f">={VERSION},<3.12"
    assert project["tool"]["ruff"]["target-version"] == "py" + VERSION.replace(".", "")
    assert f"ifneq ($(PYTHON_VERSION),{VERSION})" in (ROOT / "Makefile").read_text()
    assert f"Python {VERSION} (the one version" in (ROOT / "README.md").read_text()
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == VERSION
    stated = set(re.findall(r"Python (3\.\d+)", (ROOT / "README.md").read_text()))
    assert stated == {VERSION}
