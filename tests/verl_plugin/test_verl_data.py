"""`python -m awpo.integrations.verl.data`: parquet in verl's layout, read by pandas and by verl's RLHFDataset,
scored by compute_score."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from awpo.bfcl.scripted import first_acceptable_calls
from awpo.data import builtin_tasks
from awpo.integrations.verl.data import COLUMNS, export
from awpo.integrations.verl.reward import compute_score
from awpo.toolcall import format_tool_calls


def test_cli_writes_verl_columns(tmp_path):
    result = subprocess.run([sys.executable, "-m", "awpo.integrations.verl.data", "--output", str(tmp_path / "data"),
                             "--train-size", "20", "--test-size", "8"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    train = pd.read_parquet(tmp_path / "data" / "train.parquet")
    test = pd.read_parquet(tmp_path / "data" / "test.parquet")
    assert list(train.columns) == list(COLUMNS) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert (len(train), len(test)) == (20, 8)
    row = train.iloc[0]
    assert row["data_source"] == "awpo/builtin" and row["ability"] == "tool_use"
    assert [m["role"] for m in row["prompt"]][0] == "system" and row["prompt"][-1]["role"] == "user"
    assert row["reward_model"]["style"] == "rule"
    tasks = builtin_tasks("train", n=20)
    assert json.loads(row["reward_model"]["ground_truth"]) == tasks[0].ground_truth
    assert row["extra_info"]["id"] == tasks[0].id and row["extra_info"]["index"] == 0
    assert json.loads(row["extra_info"]["tools"]) == tasks[0].tools
    assert row["extra_info"]["request"] == tasks[0].user_prompt
    assert set(test["extra_info"].map(lambda e: e["split"])) == {"heldout"}


def test_verl_rlhf_dataset_reads_the_export_and_compute_score_scores_it(tmp_path, tokenizer):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    paths = export(tmp_path, train_size=12, test_size=4)
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 100000, "filter_overlong_prompts": True,
                               "cache_dir": str(tmp_path / "cache"), "return_raw_chat": True})
    dataset = RLHFDataset(str(paths["train"]), tokenizer, config)
    assert len(dataset) == 12
    tasks = builtin_tasks("train", n=12)
    for index, task in enumerate(tasks):
        item = dataset[index]
        assert item["raw_prompt"][-1]["content"] == task.user_prompt
        answer = "<think>Use the tool.</think>\n" + format_tool_calls(first_acceptable_calls(task.ground_truth))
        if not task.ground_truth:
            answer = "<think>No tool fits this request.</think>\nNone of the tools can do that."
        scores = compute_score(item["data_source"], answer, item["reward_model"]["ground_truth"], item["extra_info"])
        assert scores["score"] == scores["outcome"] == 1.0, task.id
        assert 0.0 <= scores["reasoning"] <= 1.0


def test_export_rejects_multi_turn(tmp_path):
    with pytest.raises(ValueError, match="multi-turn"):
        export(tmp_path, categories=["simple", "multi_turn"])
    result = subprocess.run([sys.executable, "-m", "awpo.integrations.verl.data", "--output", str(tmp_path),
                             "--categories", "multi_turn"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "multi-turn" in result.stderr
