"""The reasoning judge behind an OpenAI-compatible server (awpo.judges.http), against a small local
HTTP server speaking the OpenAI chat completions schema (test_judge_support.py: a real server
process on 127.0.0.1, scripted replies; a real `vllm serve` does not start within CI's budget on two
cores, see test_judge_engine.py for the opt-in test against one).

The judge client, its threads, sockets, timeouts and retries are real; so are the trainer, the tiny
policy and its vLLM engine in the training-step tests.
"""
from __future__ import annotations

import json
import math
import time

import pytest
from test_judge_support import ThinkingEngine, free_port, start_local_server

from awpo.config import Config, ConfigError, parse_args
from awpo.data import Task
from awpo.judges import JudgeRequest, JudgeUnavailableError, LLMJudge, OpenAIChatBackend, build_judge
from awpo.judges.http import api_base
from awpo.judges.verdict import JSON_REPLY_FORMAT, PLAIN_REPLY_FORMAT
from awpo.toolcall import ToolCall
from awpo.trainer import Trainer, make_judge

TOOLS = [{"name": "get_weather", "description": "Weather in a city.",
          "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
CALLS = [ToolCall("get_weather", {"city": "Oslo"})]


def request(text: str | None) -> JudgeRequest:
    return JudgeRequest("Weather in Oslo?", text, CALLS, TOOLS)


@pytest.fixture
def server(tmp_path):
    """Start local OpenAI-schema servers with the given options; all are killed at the end."""
    started = []

    def start(*args: str):
        started.append(start_local_server(str(tmp_path / f"server{len(started)}.log"), *args))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def judged(events: list[dict]) -> list[dict]:
    """The server's events less those of connect()'s response_format probe (its prompt has no item-K)."""
    return [e for e in events if e["item"] != "?"]


def http_judge(url: str, **options) -> LLMJudge:
    backend_options = dict(model="local-judge", timeout_s=5.0, max_retries=1, concurrency=4, backoff_s=0.05)
    backend_options.update(options)
    return LLMJudge(OpenAIChatBackend(url, **backend_options).connect(), name=f"server at {url}")


def test_a_step_is_sent_concurrently_and_each_reply_scores_its_own_completion_local_openai_server(server):
    local = server("--delay", "0.02")
    judge = http_judge(local.url, concurrency=4)
    # one default-sized step: 32 completions, answered out of order (slow-K), two duplicates, one without reasoning
    texts = [f"item-{k} grade-{k % 11} slow-{(31 - k) % 4} I call get_weather for Oslo." for k in range(30)]
    batch = [request(t) for t in texts] + [request(texts[3]), request(None)]
    started = time.perf_counter()
    scores = judge.score_many(batch)
    elapsed = time.perf_counter() - started
    assert scores[:30] == pytest.approx([(k % 11) / 10 for k in range(30)])
    assert scores[30] == pytest.approx(0.3) and scores[31] == 0.0  # the duplicate; no reasoning: not asked
    requests = judged(local.events("request"))
    assert len(requests) == 30 and sorted(e["item"] for e in requests) == sorted(f"item-{k}" for k in range(30))
    # the concurrency cap; the server counts a request in flight until after it has sent the answer, so one
    # that the client has already read (the start-up probe, or a finished request) may still be counted
    assert max(e["inflight"] for e in requests) <= 4 + 1
    assert judge.stats.requests == 30 and judge.stats.failed == 0 and judge.stats.unreadable == 0
    assert 0 < judge.stats.latency_s <= elapsed
    assert judge.finish_step()["judge/requests"] == 30


def test_a_server_killed_mid_step_gives_nan_for_the_unanswered_requests_local_openai_server(server):
    local = server("--die-after", "6", "--delay", "0.05")  # SIGKILLs itself after its 6th answer, the probe's + 5
    judge = http_judge(local.url, concurrency=2, max_retries=2)
    assert len(local.events("answer")) == 1  # connect()'s response_format probe
    texts = [f"item-{k} grade-6 I call get_weather." for k in range(16)]
    started = time.perf_counter()
    scores = judge.score_many([request(t) for t in texts])
    assert time.perf_counter() - started < 10  # refused connections: retried twice, then NaN
    local.process.wait(timeout=10)
    answered = {e["item"] for e in judged(local.events("answer"))}
    assert 5 <= len(answered) <= 6  # the 5th answer kills it; a concurrent 6th may just get out
    for text, score in zip(texts, scores):
        item = text.split()[0]
        if item in answered:
            assert score == pytest.approx(0.6) or math.isnan(score)  # a reply lost in the kill is NaN too
        else:
            assert math.isnan(score)
    metrics = judge.finish_step()  # the step completes: metrics, no exception
    assert metrics["judge/requests"] == 16
    assert metrics["judge/failed_requests"] == sum(math.isnan(s) for s in scores) >= 16 - len(answered)
    assert judge.stats.last_error


def test_a_hung_request_times_out_while_the_others_are_scored_local_openai_server(server):
    local = server()
    judge = http_judge(local.url, timeout_s=1.0, max_retries=1, backoff_s=0.05)
    started = time.perf_counter()
    scores = judge.score_many([request("item-0 HANG"), request("item-1 grade-9"), request("item-2 grade-4")])
    elapsed = time.perf_counter() - started
    assert math.isnan(scores[0]) and scores[1:] == pytest.approx([0.9, 0.4])
    assert 1.9 < elapsed < 10  # two attempts of 1 s each, not an hour
    # the server logs a request once it has read it, maybe after the client gave up: wait for the log
    deadline = time.monotonic() + 10
    while [e["item"] for e in local.events("request")].count("item-0") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e["item"] for e in local.events("request")].count("item-0") == 2
    assert judge.stats.failed == 1 and judge.stats.last_error == "deadline of 1 s passed"


def test_retries_are_bounded_and_only_for_transient_failures_local_openai_server(server):
    local = server()
    judge = http_judge(local.url, max_retries=3, backoff_s=0.05)
    started = time.perf_counter()
    scores = judge.score_many([request("item-0 FAIL503"), request("item-1 NOTJSON"), request("item-2 grade-2")])
    elapsed = time.perf_counter() - started
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and scores[2] == pytest.approx(0.2)
    attempts = [e["item"] for e in local.events("request")]
    assert attempts.count("item-0") == 4      # 503: one try and 3 retries, then no score
    assert attempts.count("item-1") == 1      # a body that is not the schema: not retried
    assert elapsed >= 0.05 + 0.1 + 0.2        # backed off 0.05, 0.1, 0.2 s
    assert judge.stats.failed == 2


def test_a_reply_without_a_score_is_unreadable_not_failed_local_openai_server(server):
    judge = http_judge(server().url)
    scores = judge.score_many([request("item-0 NOSCORE"), request("item-1 grade-5")])
    assert math.isnan(scores[0]) and scores[1] == 0.5
    assert judge.stats.unreadable == 1 and judge.stats.failed == 0 and judge.stats.requests == 2
    assert [v.status for v in judge.verdicts([request("item-0 NOSCORE"), request("item-1 grade-5")])] == \
        ["unreadable", "cached"]  # a score is cached, an unreadable reply is asked again


def test_start_up_checks_name_the_option(server, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match=r"judge_url='http://127.0.0.1:\d+': cannot reach"):
        make_judge(Config(judge="llm", judge_url=dead, judge_timeout_s=2.0).validate(), None, None)
    local = server("--model", "served-judge", "--api-key", "s3cret")
    monkeypatch.setenv("JUDGE_KEY", "wrong")
    with pytest.raises(ValueError, match="judge_api_key_env='JUDGE_KEY': .* refused the API key"):
        make_judge(Config(judge="llm", judge_url=local.url, judge_api_key_env="JUDGE_KEY").validate(), None, None)
    monkeypatch.setenv("JUDGE_KEY", "s3cret")
    with pytest.raises(ValueError, match="judge_model_name='other': .* serves served-judge, not 'other'"):
        make_judge(Config(judge="llm", judge_url=local.url, judge_api_key_env="JUDGE_KEY",
                          judge_model_name="other").validate(), None, None)
    judge = make_judge(Config(judge="llm", judge_url=local.url, judge_api_key_env="JUDGE_KEY").validate(), None, None)
    assert judge.generate.model == "served-judge"  # the server's only model
    assert judge.score_many([request("item-0 grade-10")]) == [1.0]


@pytest.mark.parametrize("argv, message", [
    (["--judge", "llm", "--judge_model", "/no/such/model", "--judge_url", "http://127.0.0.1:8000/v1"],
     "judge_model='/no/such/model' and judge_url='http://127.0.0.1:8000/v1' are both set"),
    (["--judge", "llm", "--judge_url", "127.0.0.1:8000"],
     "judge_url='127.0.0.1:8000': '127.0.0.1:8000' is not an http"),
    (["--judge", "rule", "--judge_url", "http://127.0.0.1:8000"],
     "judge_url='http://127.0.0.1:8000' needs judge='llm'"),
    (["--judge", "llm", "--judge_model_name", "m"], "judge_model_name='m' applies to a judge server"),
    (["--judge_timeout_s", "0"], "judge_timeout_s=0.0: must be > 0.0"),
    (["--judge_concurrency", "0"], "judge_concurrency=0: must be >= 1"),
    (["--judge_max_retries", "-1"], "judge_max_retries=-1: must be >= 0"),
])
def test_bad_judge_options_fail_at_start_up_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("rubric, message", [
    ("Grade {reasoning} for {user}", "unknown field(s) {user}"),
    ("Grade this: {prompt}", "never shows the reasoning"),
    ('Reply as {"score": N}. {reasoning}', "unknown field"),
    ("Grade {reasoning", "not a valid template"),
])
def test_a_bad_rubric_file_fails_at_start_up_naming_the_option(tmp_path, rubric, message):
    path = tmp_path / "rubric.txt"
    path.write_text(rubric)
    from awpo.preflight import check_judge

    with pytest.raises(ConfigError, match="judge_rubric=") as err:
        check_judge(Config(judge="llm", judge_rubric=str(path)).validate())
    assert message in str(err.value)


def test_a_rubric_file_replaces_the_built_in_rubric_local_openai_server(server, tmp_path):
    local = server()
    path = tmp_path / "rubric.txt"
    path.write_text('Request: {prompt}\nReasoning: {reasoning}\nGrade it {{fairly}}.')
    judge = build_judge(Config(judge="llm", judge_url=local.url, judge_rubric=str(path)).validate().judge_options())
    prompt = judge.rubric_prompt(request("item-0 grade-3 my reasoning"))
    assert prompt.startswith('Request: <request id="') and "\nWeather in Oslo?\n</request id=" in prompt
    assert "\nReasoning: <reasoning id=" in prompt and "\nitem-0 grade-3 my reasoning\n</reasoning id=" in prompt
    reply_format = JSON_REPLY_FORMAT if judge.structured else PLAIN_REPLY_FORMAT
    assert prompt.endswith("\nGrade it {fairly}.\n" + reply_format)  # the reply format, appended
    assert judge.score_many([request("item-0 grade-3 my reasoning")]) == [pytest.approx(0.3)]


def test_api_base_accepts_the_usual_forms():
    assert api_base("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert api_base("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    assert api_base("https://example.com/openai/v1") == "https://example.com/openai/v1"
    for bad in ("127.0.0.1:8000", "ftp://x/v1", "http:///v1"):
        with pytest.raises(ValueError, match="not an http"):
            api_base(bad)


# ----------------------------------------------------------------------------------------------
# the trainer with a server judge
# ----------------------------------------------------------------------------------------------

def weather_tasks(n=4):
    cities = ["Paris", "Lima", "Oslo", "Rome", "Kyiv"]
    return [Task(id=f"w{i}", category="simple", messages=[{"role": "user", "content": f"Weather in {c}?"}],
                 tools=TOOLS, ground_truth=[{"get_weather": {"city": [c]}}]) for i, c in enumerate(cities[:n])]


def test_training_steps_report_the_judge_and_stop_only_when_it_is_gone_local_openai_server(
        server, tiny_model_dir, tiny_vllm_engine, tmp_path):
    local = server()
    config = Config(model=tiny_model_dir, output_dir=str(tmp_path / "run"), max_steps=4, prompts_per_step=2,
                    num_generations=4, per_device_train_batch_size=8, max_completion_length=8, temperature=1.0,
                    estimator="awpo", judge="llm", judge_url=local.url, judge_max_retries=0,
                    judge_max_failed_steps=2, eval_dataset="none", save_steps=0, plot=False, max_model_len=1024,
                    mask_truncated_completions=False)
    trainer = Trainer(config, engine=ThinkingEngine(tiny_vllm_engine), train_tasks=weather_tasks())
    first = trainer.training_step()
    assert first["judge/requests"] == 8 and first["judge/failed_requests"] == 0
    assert first["reward/reasoning_mean"] == pytest.approx(0.8) and first["judge/latency_s"] > 0
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["judge/requests"] == 8
    local.kill()
    second = trainer.training_step()  # every request refused: NaN scores, the step still completes
    assert second["judge/failed_requests"] == 8 and second["reward/reasoning_valid_fraction"] == 0.0
    with pytest.raises(JudgeUnavailableError,
                       match=r"reasoning judge \(chat completions at http://127.0.0.1:\d+/v1, model local-judge, "
                             r"structured verdicts \(response_format\)\) gave no score to any of the 16 requests "
                             r"of the last 2 training steps"):
        trainer.training_step()
    assert trainer.step == 2  # stopped before the third update


# ----------------------------------------------------------------------------------------------
# python -m awpo.judge --url
# ----------------------------------------------------------------------------------------------

def write_lines(path, records) -> str:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


def test_python_m_awpo_judge_scores_a_file_against_a_server_local_openai_server(server, tmp_path, capsys):
    from awpo import judge as judge_cli

    local = server("--model", "served-judge")
    source = write_lines(tmp_path / "in.jsonl", [
        {"id": 7, "prompt": "Weather in Oslo?", "tools": TOOLS,
         "completion": '<think>item-0 grade-9 get_weather for Oslo</think>\n<tool_call>\n'
                       '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'},
        {"question": "Weather in Lima?", "completion": "<think></think>no reasoning"},
        {"messages": [{"role": "user", "content": "Hi"}], "reasoning": "item-2 NOSCORE hello", "calls": []},
    ])
    assert judge_cli.main(["--url", local.url, "--input", source, "--concurrency", "2"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["line"], r["score"], r["status"]) for r in records] == [
        (1, 0.9, "scored"), (2, 0.0, "missing_reasoning"), (3, None, "unreadable")]
    assert records[0]["id"] == 7 and records[0]["reply"].endswith("Score: 9/10")
    assert "judge: chat completions at " + local.url + ", model served-judge" in captured.err
    assert "judge requests 2: 0 failed, 1 unreadable" in captured.err

    unreadable = write_lines(tmp_path / "bad.jsonl", [{"prompt": "p", "reasoning": "item-3 NOSCORE"}])
    assert judge_cli.main(["--url", local.url, "--input", unreadable]) == 1  # the judge scored nothing
    assert judge_cli.main(["--rule", "--input", source]) == 0                # the rule judge, for comparison
    rule = [json.loads(line) for line in capsys.readouterr().out.splitlines()[-3:]]
    assert [r["status"] for r in rule] == ["scored", "missing_reasoning", "scored"]


@pytest.mark.parametrize("argv, message", [
    (["--input", "x.jsonl"], "choose the judge: --model PATH"),
    (["--rule", "--url", "http://127.0.0.1:1", "--input", "x.jsonl"], "--rule and --url: choose one judge"),
    (["--model", "/no/such/dir", "--input", "x.jsonl"], "judge_model='/no/such/dir': no such model directory"),
    (["--url", "http://127.0.0.1:1", "--model", "/m", "--input", "x.jsonl"], "are both set"),
    (["--url", "http://127.0.0.1:1", "--concurrency", "0", "--input", "x.jsonl"], "judge_concurrency=0: must be >= 1"),
])
def test_python_m_awpo_judge_rejects_bad_options_naming_them(argv, message, capsys):
    from awpo import judge as judge_cli

    with pytest.raises(SystemExit) as exit_info:
        judge_cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_python_m_awpo_judge_reports_bad_input_and_dead_servers(tmp_path, capsys):
    from awpo import judge as judge_cli

    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "p", "reasoning": "r"}, {"prompt": "p"}])
    assert judge_cli.main(["--rule", "--input", source]) == 2
    assert f"{source}:2: needs 'completion'" in capsys.readouterr().err
    assert judge_cli.main(["--rule", "--input", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    good = write_lines(tmp_path / "good.jsonl", [{"prompt": "p", "reasoning": "r"}])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    assert judge_cli.main(["--url", dead, "--input", good, "--timeout_s", "2"]) == 2
    assert f"judge_url='{dead}': cannot reach" in capsys.readouterr().err


def test_the_trainer_checks_the_judge_server_before_any_model_loads(monkeypatch, tmp_path):
    import awpo.trainer as trainer_module

    def no_model(*args, **kwargs):
        raise AssertionError("the policy was loaded before the judge's preflight")

    monkeypatch.setattr(trainer_module, "load_policy", no_model)
    dead = f"http://127.0.0.1:{free_port()}"
    config = Config(judge="llm", judge_url=dead, judge_timeout_s=2.0, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"judge_url='http://127.0.0.1:\d+': cannot reach"):
        Trainer(config)
