"""The reasoning judge as its own model in the trainer's process (`--judge llm --judge_model PATH`): a
second real vLLM engine (CPU build) beside the policy's, never weight-synced.

The judge model is a random tiny model (seed 1; the policy is seed 0) whose replies the engine
constrains to ``VERDICT_SCHEMA`` (vLLM's structured outputs), so every reply is a verdict that
``parse_judge_score`` reads: the scores are real numbers read from a real engine's replies, with no
model taught to answer anything (these tests used to fine-tune a judge for minutes first). What a
test checks is therefore how a reply is obtained and read, never which score a model gives. The
training-step test runs the real trainer on the tiny policy; its rollouts go through
`ThinkingEngine` (the real engine, with a reasoning block put before each completion's text, since
the random policy writes none).

An opt-in test runs the judge against a real `vllm serve` started with the same structured-output
settings (`AWPO_TEST_VLLM_SERVE=1`; the server takes half a minute to two minutes to start on two
cores, too long for CI).
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
import torch
from test_judge_support import ThinkingEngine, free_port
from tiny_model import build_tiny_model

from awpo import judge as judge_cli
from awpo.config import Config
from awpo.data import Task
from awpo.judges import JudgeRequest
from awpo.judges.engine import VERDICT_MAX_TOKENS, EngineBackend
from awpo.judges.verdict import JSON_REPLY_FORMAT, VERDICT_SCHEMA, parse_judge_score
from awpo.rollout.vllm_engine import STRUCTURED_OUTPUTS_CONFIG
from awpo.scoring import EpisodeScores, score_episodes
from awpo.toolcall import ToolCall
from awpo.trainer import Trainer, make_judge

TOOLS = [{"name": "get_weather", "description": "Weather in a city.",
          "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
# a short rubric (a --judge_rubric file): short prompts keep the tiny judge's calls quick
JUDGE_RUBRIC = "Grade the reasoning of a tool-using assistant.\n{prompt}\n{reasoning}\n{calls}\n{reply_format}"
JUDGE_MAX_MODEL_LEN = 2048  # the tiny model's positions; room for the longest verdict after a short rubric


def request(text: str | None, prompt: str = "Weather in Oslo?") -> JudgeRequest:
    return JudgeRequest(prompt, text, [ToolCall("get_weather", {"city": "Oslo"})], TOOLS)


def verdict_score(reply) -> float:
    """The score a structured reply holds: it must be exactly one JSON verdict object."""
    assert isinstance(reply, str), reply
    verdict = json.loads(reply)
    assert set(verdict) == {"reason", "score"} and isinstance(verdict["score"], int), reply
    score = parse_judge_score(reply)
    assert score == verdict["score"] / 10, reply
    return score


@pytest.fixture(scope="module")
def judge_model_dir(tmp_path_factory) -> str:
    """A random tiny judge model (not the policy's weights) with the rubric beside it."""
    path = build_tiny_model(str(tmp_path_factory.mktemp("judge-model")), seed=1)
    with open(os.path.join(path, "rubric.txt"), "w") as file:
        file.write(JUDGE_RUBRIC)
    return path


def judge_config(model_dir: str, **overrides) -> Config:
    values = dict(judge="llm", judge_model=model_dir, judge_rubric=os.path.join(model_dir, "rubric.txt"),
                  judge_max_model_len=JUDGE_MAX_MODEL_LEN, judge_kv_cache_gb=0.25)
    values.update(overrides)
    return Config(**values).validate()


@pytest.fixture(scope="module")
def engine_judge(judge_model_dir, tiny_vllm_engine):
    """The judge as the trainer builds it: a second vLLM engine (started after the policy's)."""
    return make_judge(judge_config(judge_model_dir), tiny_vllm_engine, None)


@pytest.fixture(scope="module")
def judge_engine(engine_judge):
    return engine_judge.generate.engine


class CountingEngine:
    """Passes calls through to the real judge engine, recording them and the replies."""

    def __init__(self, engine):
        self.engine, self.calls, self.kwargs, self.replies = engine, [], [], []

    def generate(self, prompts, **kwargs):
        self.calls.append(len(prompts))
        self.kwargs.append(kwargs)
        groups = self.engine.generate(prompts, **kwargs)
        self.replies.extend(group[0].text for group in groups)
        return groups


def test_a_judge_model_in_a_second_engine_scores_a_whole_step_in_one_call(engine_judge, monkeypatch):
    backend = engine_judge.generate
    assert backend.structured and backend.reply_tokens == VERDICT_MAX_TOKENS and backend.max_tokens == 96
    counting = CountingEngine(backend.engine)
    monkeypatch.setattr(backend, "engine", counting)
    engine_judge.new_step()
    # one default-sized step of 32: 28 distinct reasonings, a duplicate, two without reasoning, one too long
    texts = [f"Completion {k}: the user wants Oslo's weather, so get_weather with city Oslo." for k in range(28)]
    batch = [request(t) for t in texts] + [request(texts[0]), request(None), request("  "),
                                           request("x" * 1900, prompt="y" * 1900)]
    scores = engine_judge.score_many(batch)
    assert counting.calls == [28]           # one batched, greedy call for every distinct completion
    assert counting.kwargs[0]["json_schema"] == VERDICT_SCHEMA and counting.kwargs[0]["temperature"] == 0.0
    assert scores[:28] == [verdict_score(reply) for reply in counting.replies]  # each reply read as its verdict
    assert scores[28] == scores[0]          # the duplicate: the same verdict, not asked twice
    assert scores[29:31] == [0.0, 0.0]      # no reasoning: the missing-reasoning score, never asked
    assert math.isnan(scores[31])           # longer than the judge's context: no score, the rest unharmed
    metrics = engine_judge.finish_step()
    assert metrics["judge/requests"] == 29 and metrics["judge/failed_requests"] == 1
    assert metrics["judge/unreadable_replies"] == 0 and metrics["judge/latency_s"] > 0
    assert "longer than the judge's context" in engine_judge.stats.last_error


def test_structured_outputs_make_every_reply_of_a_random_judge_a_readable_verdict(judge_engine):
    """The guarantee the engine judge rests on, checked on the engine and on the backend: greedy and
    sampled, every reply of the random tiny judge is one VERDICT_SCHEMA object that the verdict
    parser reads, ended by the grammar (finish "stop"), not by its budget. Without the schema the same
    model's replies are unreadable: the constraint, not the model, makes them verdicts."""
    prompts = [JUDGE_RUBRIC.format(prompt=f"Request {k}: weather in city {k}?", reasoning=reasoning,
                                   calls='{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                                   reply_format=JSON_REPLY_FORMAT)
               for k, reasoning in enumerate(["I call get_weather for Oslo.", "No tool fits.", "x " * 20,
                                              "Numbers 3/10, Score: 9/10 and {\"score\": 10} in the reasoning.",
                                              "", "<think>nested</think> \\u0001 \t tab and \"quotes\""])]
    greedy = EngineBackend(judge_engine, judge_engine.tokenizer, max_model_len=JUDGE_MAX_MODEL_LEN)
    sampled = EngineBackend(judge_engine, judge_engine.tokenizer, max_model_len=JUDGE_MAX_MODEL_LEN,
                            temperature=1.0)
    assert greedy.structured and sampled.structured
    for reply in greedy(prompts) + sampled(prompts):
        verdict_score(reply)  # one JSON verdict, read by the parser

    texts = [greedy.chat_text(p) for p in prompts]
    # the premise of the guarantee: each prompt leaves the context room for the longest verdict
    assert all(len(judge_engine.tokenizer(t, add_special_tokens=False)["input_ids"]) + VERDICT_MAX_TOKENS
               <= JUDGE_MAX_MODEL_LEN for t in texts)
    groups = judge_engine.generate(texts, n=3, temperature=1.0, max_tokens=VERDICT_MAX_TOKENS,
                                   json_schema=VERDICT_SCHEMA, seed=7)
    completions = [c for group in groups for c in group]
    assert len(completions) == 3 * len(prompts)
    assert all(c.finish_reason == "stop" for c in completions), [c.finish_reason for c in completions]
    assert all(not math.isnan(verdict_score(c.text)) for c in completions)

    free = EngineBackend(judge_engine, judge_engine.tokenizer, max_model_len=JUDGE_MAX_MODEL_LEN,
                         structured_output=False)
    assert not free.structured and free.reply_tokens == free.max_tokens == 96
    assert all(math.isnan(parse_judge_score(reply)) for reply in free(prompts))


def engine_weights(engine) -> dict[str, torch.Tensor]:
    """A copy of the weights the vLLM engine's model holds right now, read inside the engine."""
    (weights,) = engine.llm.apply_model(
        lambda model: {name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
    return weights


def test_a_training_step_syncs_the_policy_and_leaves_the_judge_untouched(
        engine_judge, judge_engine, tiny_model_dir, tiny_vllm_engine, tmp_path):
    """The step syncs the policy's new weights into the policy's engine, and nothing into the judge's.

    Both engines' weights are read inside vLLM before and after the step and compared exactly. This
    test used to check it through behaviour: a tiny judge fine-tuned for minutes to answer
    "Score: 7/10" had to give that reply again after the step. That depended on the CPU. The taught
    reply won its tokens by small logit margins, and vLLM's CPU kernels round differently from one
    instruction set to another and from one execution path to another (a batch of one or of many, a
    prefix-cache hit that skips part of the prefill), so a near tie could flip: on Intel Xeon (AMX)
    machines the judge replied differently ("0.07 == 0.7") with its weights unchanged. Whether the
    judge's weights changed is a question about the weights: asked of them directly, the answer is
    the same bits on every CPU. The judge is still asked during the step (structured verdicts, so
    every reply is read), and still answers after it.
    """
    config = Config(model=tiny_model_dir, output_dir=str(tmp_path / "run"), max_steps=1, prompts_per_step=2,
                    num_generations=4, per_device_train_batch_size=8, max_completion_length=8, temperature=1.0,
                    learning_rate=3e-3, estimator="awpo", judge="llm",
                    eval_dataset="none", save_steps=0, plot=False, max_model_len=1024, mask_truncated_completions=False)
    tasks = [Task(id=f"w{i}", category="simple", messages=[{"role": "user", "content": f"Weather in {c}?"}],
                  tools=TOOLS, ground_truth=[{"get_weather": {"city": [c]}}]) for i, c in enumerate(["Oslo", "Lima"])]

    def scores_with_a_scripted_outcome(episodes):
        """The judge scores the reasoning as in training; the outcome alternates inside each group, so
        the step has advantages (and moves the policy) whatever scores the random judge gives."""
        judged = score_episodes(episodes, graded=False, judge=engine_judge)
        outcome = [float(k % 2) for k in range(len(episodes))]
        return EpisodeScores(outcome=outcome, exact=outcome, reasoning=judged.reasoning)

    # half the completions reason (the judge is asked about them), half do not (0.0)
    trainer = Trainer(config, engine=ThinkingEngine(tiny_vllm_engine, every=2), train_tasks=tasks, judge=engine_judge,
                      score_fn=scores_with_a_scripted_outcome)
    judge_before, policy_before = engine_weights(judge_engine), engine_weights(tiny_vllm_engine)

    metrics = trainer.training_step()

    assert metrics["judge/requests"] == 4 and metrics["judge/failed_requests"] == 0
    assert metrics["judge/unreadable_replies"] == 0  # structured verdicts: every reply read
    assert metrics["completion/with_reasoning_fraction"] == 0.5
    judge_after, policy_after = engine_weights(judge_engine), engine_weights(tiny_vllm_engine)
    assert judge_after.keys() == judge_before.keys()
    assert all(torch.equal(judge_after[name], judge_before[name]) for name in judge_before)  # the judge: untouched
    changed = [name for name in policy_before if not torch.equal(policy_after[name], policy_before[name])]
    assert changed, "the policy's engine did not get the trained weights"
    embedding = trainer.model.get_input_embeddings().weight.detach()  # the trained policy's, named alike in vLLM
    assert torch.equal(policy_after["model.embed_tokens.weight"][:embedding.shape[0]], embedding)
    assert not torch.equal(policy_before["model.embed_tokens.weight"][:embedding.shape[0]], embedding)
    # and the judge's engine still answers (a policy sync must not disturb a second engine in the process)
    assert not math.isnan(verdict_score(engine_judge.generate(["Grade: I call get_weather for Oslo."])[0]))


def test_python_m_awpo_judge_scores_a_file_with_a_judge_model(judge_model_dir, judge_engine, tmp_path, capsys,
                                                             monkeypatch):
    # the command line opens the judge engine itself: it gets the module's judge engine (the same model,
    # already started) instead of a third one, after the options it was opened with are recorded
    import awpo.rollout

    opened = []

    def open_engine(kind, model_path, **options):
        opened.append((kind, model_path, options))
        return judge_engine

    monkeypatch.setattr(awpo.rollout, "make_engine", open_engine)
    lines = [{"id": "a", "prompt": "Weather in Oslo?", "tools": TOOLS,
              "completion": '<think>Oslo: get_weather.</think>\n<tool_call>\n{"name": "get_weather", '
                            '"arguments": {"city": "Oslo"}}\n</tool_call>'},
             {"question": "Weather in Lima?", "completion": "no reasoning here"},
             {"messages": [{"role": "user", "content": "Hi"}], "reasoning": "No tool fits a greeting.", "calls": []}]
    source = tmp_path / "completions.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    output = tmp_path / "scores.jsonl"
    status = judge_cli.main(["--model", judge_model_dir, "--input", str(source), "--output", str(output),
                             "--rubric", os.path.join(judge_model_dir, "rubric.txt"), "--max_model_len", "2048",
                             "--kv_cache_gb", "0.25"])
    assert status == 0
    assert [(kind, path) for kind, path, _ in opened] == [("vllm", judge_model_dir)]
    assert opened[0][2]["max_model_len"] == 2048 and opened[0][2]["kv_cache_gb"] == 0.25
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in records] == [(1, "scored"), (2, "missing_reasoning"), (3, "scored")]
    assert records[0]["id"] == "a" and records[1]["score"] == 0.0
    for record in (records[0], records[2]):
        assert record["score"] == verdict_score(record["reply"])
    err = capsys.readouterr().err
    assert f"judge: judge model {judge_model_dir}" in err and "judge requests 2: 0 failed, 0 unreadable" in err


@pytest.mark.vllm  # opt-in: a real `vllm serve`
@pytest.mark.skipif(os.environ.get("AWPO_TEST_VLLM_SERVE") != "1",
                    reason="starts a real `vllm serve` (1-2 minutes on 2 cores): set AWPO_TEST_VLLM_SERVE=1")
def test_the_server_judge_against_a_real_vllm_server(judge_model_dir, tmp_path, capsys):
    """The server's structured outputs set up as the in-process engine's (llguidance, compact JSON:
    vLLM's default lets a random model pad the JSON with whitespace to the end of its budget), and a
    budget for the longest verdict: every reply of the random judge is then a readable verdict."""
    port = free_port()
    log = open(tmp_path / "vllm-serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", judge_model_dir, "--host",
         "127.0.0.1", "--port", str(port), "--served-model-name", "random-judge", "--max-model-len",
         str(JUDGE_MAX_MODEL_LEN), "--dtype", "float32", "--enforce-eager",
         "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS_CONFIG)],
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
        rubric = os.path.join(judge_model_dir, "rubric.txt")
        judge = make_judge(Config(judge="llm", judge_url=url, judge_rubric=rubric,
                                  judge_max_tokens=VERDICT_MAX_TOKENS).validate(), None, None)
        assert judge.generate.model == "random-judge" and judge.generate.structured
        verdicts = judge.verdicts([request(f"Completion {k}: get_weather for Oslo.") for k in range(8)])
        assert [v.status for v in verdicts] == ["scored"] * 8
        assert [v.score for v in verdicts] == [verdict_score(v.reply) for v in verdicts]
        assert judge.stats.requests == 8 and judge.stats.failed == judge.stats.unreadable == 0
        source = tmp_path / "completions.jsonl"
        source.write_text(json.dumps({"prompt": "Weather in Oslo?", "reasoning": "I call get_weather for Oslo.",
                                      "calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}) + "\n")
        assert judge_cli.main(["--url", url, "--input", str(source), "--rubric", rubric,
                               "--max_tokens", str(VERDICT_MAX_TOKENS)]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["status"] == "scored" and record["score"] == verdict_score(record["reply"])
        server.terminate()
        server.wait(timeout=60)
        judge.new_step()
        assert math.isnan(judge.score_many([request("asked after the server stopped")])[0])
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=60)
        log.close()


def test_without_vllm_the_judge_model_runs_on_transformers_generate(judge_model_dir):
    judge = make_judge(judge_config(judge_model_dir, rollout="hf", judge_max_tokens=12), None, None)
    backend = judge.generate
    assert type(backend.engine).__name__ == "HFEngine"
    assert not backend.structured and backend.reply_tokens == 12  # transformers' generate cannot constrain
    verdicts = judge.verdicts([request("I call get_weather for Oslo."), request(None)])
    # the random judge's free text rarely holds a score: what is checked is that the model was asked
    assert verdicts[0].status in ("scored", "unreadable") and isinstance(verdicts[0].reply, str)
    assert verdicts[1].status == "missing_reasoning" and verdicts[1].score == 0.0
    assert judge.stats.requests == 1 and judge.stats.failed == 0
