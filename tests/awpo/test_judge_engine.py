"""The reasoning judge as its own model in the trainer's process (`--judge llm --judge_model PATH`): a
second real vLLM engine (CPU build) beside the policy's, never weight-synced.

The judge model is the tiny model taught to answer "Score: 7/10" to a short rubric given as a
`--judge_rubric` file (test_judge_support.py), so the scores are real numbers read from a real
engine's greedy replies. The training-step test runs the
real trainer on the tiny policy; its rollouts go through `ThinkingEngine` (the real engine, with a
reasoning block put before each completion's text, since the random policy writes none).

An opt-in test runs the judge against a real `vllm serve` (`AWPO_TEST_VLLM_SERVE=1`; it takes one
to two minutes to start on two cores, too long for CI).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from test_judge_support import TAUGHT_REPLY, ThinkingEngine, build_taught_judge, free_port

from awpo import judge as judge_cli
from awpo.config import Config
from awpo.data import Task
from awpo.rewards.reasoning import JudgeRequest
from awpo.toolcall import ToolCall
from awpo.trainer import Trainer, make_judge

TOOLS = [{"name": "get_weather", "description": "Weather in a city.",
          "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
TAUGHT_SCORE = 0.7
assert TAUGHT_REPLY == "Score: 7/10"


def request(text: str | None, prompt: str = "Weather in Oslo?") -> JudgeRequest:
    return JudgeRequest(prompt, text, [ToolCall("get_weather", {"city": "Oslo"})], TOOLS)


@pytest.fixture(scope="module")
def taught_judge_dir(tmp_path_factory) -> str:
    return build_taught_judge(str(tmp_path_factory.mktemp("taught-judge")))


def judge_config(model_dir: str, **overrides) -> Config:
    values = dict(judge="llm", judge_model=model_dir, judge_rubric=os.path.join(model_dir, "rubric.txt"),
                  judge_max_model_len=1024, judge_kv_cache_gb=0.25, judge_max_tokens=12)
    values.update(overrides)
    return Config(**values).validate()


@pytest.fixture(scope="module")
def engine_judge(taught_judge_dir, tiny_vllm_engine):
    """The judge as the trainer builds it: a second vLLM engine (started after the policy's)."""
    return make_judge(judge_config(taught_judge_dir), tiny_vllm_engine, None)


class CountingEngine:
    """Passes calls through to the real judge engine, counting them."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, **kwargs):
        self.calls.append(len(prompts))
        return self.engine.generate(prompts, **kwargs)


def test_a_judge_model_in_a_second_engine_scores_a_whole_step_in_one_call(engine_judge, monkeypatch):
    backend = engine_judge.generate
    counting = CountingEngine(backend.engine)
    monkeypatch.setattr(backend, "engine", counting)
    engine_judge.new_step()
    # one default-sized step of 32: 28 distinct reasonings, a duplicate, two without reasoning, one too long
    texts = [f"Completion {k}: the user wants Oslo's weather, so get_weather with city Oslo." for k in range(28)]
    batch = [request(t) for t in texts] + [request(texts[0]), request(None), request("  "),
                                           request("x" * 1900, prompt="y" * 1900)]
    scores = engine_judge.score_many(batch)
    assert scores[:29] == [pytest.approx(TAUGHT_SCORE)] * 29
    assert scores[29:31] == [0.0, 0.0]      # no reasoning: the missing-reasoning score, never asked
    assert math.isnan(scores[31])           # longer than the judge's context: no score, the rest unharmed
    assert counting.calls == [28]           # one batched, greedy call for every distinct completion
    metrics = engine_judge.finish_step()
    assert metrics["judge/requests"] == 29 and metrics["judge/failed_requests"] == 1
    assert metrics["judge/unreadable_replies"] == 0 and metrics["judge/latency_s"] > 0
    assert "longer than the judge's context" in engine_judge.stats.last_error


def fixed_probe(engine, text: str):
    """The engine's sampled tokens and log-probs on a fixed prompt and seed: a fingerprint of its weights."""
    (completion,), = engine.generate([text], n=1, temperature=1.0, max_tokens=8, seed=1234)
    return completion.token_ids, completion.logprobs


def test_a_training_step_syncs_the_policy_and_leaves_the_judge_untouched(
        engine_judge, taught_judge_dir, tiny_model_dir, tiny_vllm_engine, tmp_path):
    config = Config(model=tiny_model_dir, output_dir=str(tmp_path / "run"), max_steps=1, prompts_per_step=2,
                    num_generations=4, per_device_train_batch_size=8, max_completion_length=8, temperature=1.0,
                    learning_rate=3e-3, estimator="awpo", judge="llm",
                    eval_dataset="none", save_steps=0, plot=False, max_model_len=1024, mask_truncated_completions=False)
    tasks = [Task(id=f"w{i}", category="simple", messages=[{"role": "user", "content": f"Weather in {c}?"}],
                  tools=TOOLS, ground_truth=[{"get_weather": {"city": [c]}}]) for i, c in enumerate(["Oslo", "Lima"])]
    # half the completions reason (judged 0.7), half do not (0.0): the reasoning advantages move the policy
    trainer = Trainer(config, engine=ThinkingEngine(tiny_vllm_engine, every=2), train_tasks=tasks, judge=engine_judge)
    judge_engine = engine_judge.generate.engine
    probe = engine_judge.generate.chat_text(engine_judge.rubric_prompt(request("I call get_weather for Oslo.")))
    judge_before, policy_before = fixed_probe(judge_engine, probe), fixed_probe(tiny_vllm_engine, probe)
    score_before = engine_judge.score(**vars(request("Fixed input: get_weather for Oslo.")))

    metrics = trainer.training_step()

    assert metrics["judge/requests"] == 4 and metrics["reward/reasoning_mean"] == pytest.approx(TAUGHT_SCORE / 2)
    assert metrics["completion/with_reasoning_fraction"] == 0.5
    assert fixed_probe(tiny_vllm_engine, probe) != policy_before  # the policy's engine got the new weights
    assert fixed_probe(judge_engine, probe) == judge_before         # the judge's did not
    engine_judge.new_step()  # a fresh cache: the judge is asked again
    assert engine_judge.score(**vars(request("Fixed input: get_weather for Oslo."))) == score_before == TAUGHT_SCORE


def test_python_m_awpo_judge_scores_a_file_with_a_judge_model(taught_judge_dir, tmp_path, capsys):
    lines = [{"id": "a", "prompt": "Weather in Oslo?", "tools": TOOLS,
              "completion": '<think>Oslo: get_weather.</think>\n<tool_call>\n{"name": "get_weather", '
                            '"arguments": {"city": "Oslo"}}\n</tool_call>'},
             {"question": "Weather in Lima?", "completion": "no reasoning here"},
             {"messages": [{"role": "user", "content": "Hi"}], "reasoning": "No tool fits a greeting.", "calls": []}]
    source = tmp_path / "completions.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    output = tmp_path / "scores.jsonl"
    status = judge_cli.main(["--model", taught_judge_dir, "--input", str(source), "--output", str(output),
                             "--rubric", os.path.join(taught_judge_dir, "rubric.txt"), "--max_model_len", "1024",
                             "--kv_cache_gb", "0.25", "--max_tokens", "12"])
    assert status == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["line"], r["score"], r["status"]) for r in records] == [
        (1, TAUGHT_SCORE, "scored"), (2, 0.0, "missing_reasoning"), (3, TAUGHT_SCORE, "scored")]
    assert records[0]["id"] == "a" and records[0]["reply"].strip() == TAUGHT_REPLY
    err = capsys.readouterr().err
    assert f"judge: judge model {taught_judge_dir}" in err and "judge requests 2: 0 failed, 0 unreadable" in err


@pytest.mark.skipif(os.environ.get("AWPO_TEST_VLLM_SERVE") != "1",
                    reason="starts a real `vllm serve` (1-2 minutes on 2 cores): set AWPO_TEST_VLLM_SERVE=1")
def test_the_server_judge_against_a_real_vllm_server(taught_judge_dir, tmp_path, capsys):
    port = free_port()
    log = open(tmp_path / "vllm-serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", taught_judge_dir, "--host",
         "127.0.0.1", "--port", str(port), "--served-model-name", "taught-judge", "--max-model-len", "1024",
         "--dtype", "float32", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1"))
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.poll() is None:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).close()
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"vllm serve did not start: see {tmp_path / 'vllm-serve.log'}")
        rubric = os.path.join(taught_judge_dir, "rubric.txt")
        judge = make_judge(Config(judge="llm", judge_url=url, judge_rubric=rubric, judge_max_tokens=12).validate(),
                           None, None)
        assert judge.generate.model == "taught-judge"
        scores = judge.score_many([request(f"Completion {k}: get_weather for Oslo.") for k in range(8)])
        assert scores == [pytest.approx(TAUGHT_SCORE)] * 8 and judge.stats.failed == 0
        source = tmp_path / "completions.jsonl"
        source.write_text(json.dumps({"prompt": "Weather in Oslo?", "reasoning": "I call get_weather for Oslo.",
                                      "calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}) + "\n")
        assert judge_cli.main(["--url", url, "--input", str(source), "--rubric", rubric, "--max_tokens", "12"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert (record["score"], record["reply"].strip()) == (TAUGHT_SCORE, TAUGHT_REPLY)
        server.terminate()
        server.wait(timeout=60)
        judge.new_step()
        assert math.isnan(judge.score_many([request("asked after the server stopped")])[0])
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=60)
        log.close()


def test_without_vllm_the_judge_model_runs_on_transformers_generate(taught_judge_dir):
    judge = make_judge(judge_config(taught_judge_dir, rollout="hf"), None, None)
    assert type(judge.generate.engine).__name__ == "HFEngine"
    assert judge.score_many([request("I call get_weather for Oslo."), request(None)]) == [TAUGHT_SCORE, 0.0]
