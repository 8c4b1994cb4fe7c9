"""``python -m awpo.eval`` end to end: a tiny random model generates, BFCL's checkers score, the table
and the JSON are written; scripted runs for ``--compare``; bad arguments fail clearly.

The tiny model (conftest's random 2-layer Llama with a 512-token byte-level BPE) writes junk, so its
accuracy is ~0 (irrelevance aside): the point is that every stage runs on real BFCL entries.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from awpo import eval as awpo_eval
from awpo.bfcl.data import DEFAULT_CATEGORIES
from awpo.bfcl.scripted import silent_model

LIMIT = 2


@pytest.fixture(scope="module")
def long_context_tiny_model(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model with a 16k context: BFCL multi-turn prompts list ~20 tools (~11k tokens with
    its small vocabulary). Rotary embeddings need no new weights for a longer context."""
    path = tmp_path_factory.mktemp("tiny-16k") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 16384
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def _read(output: Path) -> tuple[dict, str]:
    return json.loads((output / "bfcl_results.json").read_text()), (output / "bfcl_results.md").read_text()


@pytest.mark.vllm
def test_cli_end_to_end_with_a_tiny_model_on_vllm(long_context_tiny_model, tmp_path, capsys):
    output = tmp_path / "run"
    code = awpo_eval.main(["--model", long_context_tiny_model, "--categories", "default", "--limit", str(LIMIT),
                           "--max-tokens", "12", "--max-model-len", "16384", "--engine", "vllm",
                           "--output", str(output)])
    assert code == 0
    printed = capsys.readouterr().out
    result, table = _read(output)

    assert result["model"] == long_context_tiny_model and result["engine"] == "vllm"
    assert result["categories"] == list(DEFAULT_CATEGORIES) and result["limit"] == LIMIT
    assert result["bfcl_eval"] == "2026.3.23" and result["date"][:2] == "20"
    for category in DEFAULT_CATEGORIES:
        summary = result["results"][category]
        assert summary["total"] == LIMIT and 0 <= summary["correct"] <= LIMIT
        assert summary["accuracy"] == pytest.approx(summary["correct"] / LIMIT)
        assert len(result["entries"][category]) == LIMIT
        assert all(r["id"].startswith(category) for r in result["entries"][category])
        assert f"| {category} |" in table and f"| {category} |" in printed
        # every entry was really generated and scored: no generation failed
        assert summary["generation_errors"] == 0, result["entries"][category]
    # junk output: no AST category can be right, so their verdicts come from BFCL's checker
    failed = result["entries"]["simple_python"][0]
    assert not failed["valid"] and failed["error_type"] and failed["error_type"] != "generation_error"
    assert isinstance(failed["output"], str) and failed["output"]  # what the model wrote, for diagnosis
    assert result["entries"]["multi_turn_base"][0]["error_type"].startswith("multi_turn:")


@pytest.mark.bfcl  # scores with BFCL's checker in .venv-bfcl
def test_cli_hf_engine_and_failed_generation_is_recorded(long_context_tiny_model, tmp_path):
    # --max-model-len 600 leaves no room for the live_simple prompts: those entries fail with a reason
    output = tmp_path / "hf"
    awpo_eval.main(["--model", long_context_tiny_model, "--categories", "simple_python", "live_multiple",
                    "--limit", "1", "--max-tokens", "6", "--max-model-len", "600", "--engine", "hf",
                    "--output", str(output)])
    result, _ = _read(output)
    assert result["engine"] == "hf"
    assert result["results"]["simple_python"]["generation_errors"] == 0
    failure = result["entries"]["live_multiple"][0]
    assert failure["error_type"] == "generation_error" and "exceeds the model context" in failure["error"][0]
    assert result["results"]["live_multiple"] == {"accuracy": 0.0, "correct": 0, "total": 1, "generation_errors": 1}


@pytest.mark.bfcl
def test_scripted_runs_and_compare(tmp_path, capsys):
    categories = ["simple_python", "irrelevance", "multi_turn_base"]
    for name in ("oracle", "silent"):
        assert awpo_eval.main(["--scripted", name, "--categories", *categories, "--limit", "3",
                               "--output", str(tmp_path / name)]) == 0
    capsys.readouterr()
    oracle, _ = _read(tmp_path / "oracle")
    silent, _ = _read(tmp_path / "silent")
    assert [oracle["results"][c]["correct"] for c in categories] == [3, 3, 3]
    assert [silent["results"][c]["correct"] for c in categories] == [0, 3, 0]

    awpo_eval.main(["--compare", str(tmp_path / "silent" / "bfcl_results.json"), str(tmp_path / "oracle")])
    printed = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert "0.0 (0/3)" in rows["simple_python"] and "100.0 (3/3)" in rows["simple_python"]
    assert rows["simple_python"].rstrip(" |").endswith("+100.0")
    assert rows["irrelevance"].rstrip(" |").endswith("+0.0")
    assert "-66.7" not in printed and "+66.7" in rows["**overall**"]


@pytest.mark.bfcl  # scores with BFCL's checker in .venv-bfcl
def test_evaluate_api_with_a_scripted_model_writes_files(tmp_path):
    result = awpo_eval.evaluate("scripted-silent", ["irrelevance", "parallel"], 2, output_dir=str(tmp_path),
                                generate_fn=silent_model())
    assert result["results"]["irrelevance"]["accuracy"] == 1.0 and result["results"]["parallel"]["accuracy"] == 0.0
    assert result["overall"] == {"accuracy": 0.5, "correct": 2, "total": 4}
    assert Path(result["files"]["markdown"]).read_text().count("\n| ") == 4  # header, 2 categories, overall


@pytest.mark.parametrize("argv, message", [
    (["--categories", "simple_cobol", "--scripted", "silent"], "simple_cobol"),
    (["--limit", "0", "--scripted", "silent"], "--limit"),
    (["--compare", "/nonexistent/bfcl_results.json", "--scripted", "silent"], "/nonexistent"),
])
def test_bad_arguments_fail_clearly_scripted(argv, message, capsys):
    with pytest.raises((SystemExit, ValueError)) as info:
        awpo_eval.main(argv)
    assert message in str(info.value)
