"""`python -m awpo.judge`: score a file of completions with a reasoning judge, to check the judge
before training with it.

    python -m awpo.judge --url http://127.0.0.1:8000/v1 --input completions.jsonl
    python -m awpo.judge --model /path/to/judge-model --input completions.jsonl --output scores.jsonl
    python -m awpo.judge --rule --input completions.jsonl          # the grounded rule judge
    python -m awpo.judge --reference --input tasks_with_answers.jsonl   # the reference judge (a control)

The judge is built exactly as the trainer builds it for `--judge llm --judge_model PATH` or
`--judge llm --judge_url URL` (same options, same start-up checks, same rubric), so what it scores
here is what training will see. Each input line is a JSON object:

    {"prompt": "user request", "completion": "<think>...</think><tool_call>...</tool_call>", "tools": [...]}

`completion` is the model's raw output (reasoning and calls are parsed from it); `reasoning` (text or
null) with optional `calls` ([{"name": ..., "arguments": {...}}]) may replace it. The request may be
`prompt`, `question`, or `messages` (its last user message); `tools` is optional (a list of function
docs); `ground_truth` (the task's answer) is read by `--reference` only, which needs it; `id` is
copied to the output. Each output line: {"line", "id"?, "score" (null = no score), "status",
"reply", "parts"?}, where status is scored / cached / malformed_output / missing_reasoning / failed /
unreadable and `parts` (rule judge) holds the four parts of its score. A summary goes to stderr;
its counts add up: completions = the sum of the statuses, and judge requests = scored + failed +
unreadable.

Exit status: 0; 1 when the judge was asked and no request got a score; 2 for bad options or input
(a malformed line is named as file:line; an --output that cannot be written is refused before any
request is sent).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

# command-line name -> the training option it sets (its help, bounds and checks come from Config)
CLI_OPTIONS = {
    "model": "judge_model", "url": "judge_url", "model_name": "judge_model_name",
    "api_key_env": "judge_api_key_env", "rubric": "judge_rubric", "max_tokens": "judge_max_tokens",
    "timeout_s": "judge_timeout_s", "max_retries": "judge_max_retries", "concurrency": "judge_concurrency",
    "max_model_len": "judge_max_model_len", "kv_cache_gb": "judge_kv_cache_gb",
    "gpu_memory_utilization": "judge_gpu_memory_utilization",
    "missing_reasoning_score": "missing_reasoning_score", "rollout": "rollout",
}

METAVARS = {"model": "PATH", "url": "URL", "model_name": "NAME", "api_key_env": "NAME", "rubric": "FILE"}


def build_parser() -> argparse.ArgumentParser:
    from ..config import Config, field_types

    parser = argparse.ArgumentParser(
        prog="python -m awpo.judge", allow_abbrev=False,
        description="Score the reasoning of completions with a judge model (--model PATH or --url URL), as "
                    "training with --judge llm would, or with the rule judge (--rule).")
    parser.add_argument("--input", required=True, metavar="FILE", help="JSON lines of completions to score")
    parser.add_argument("--output", metavar="FILE", help="where the scores go, one JSON line each (default: stdout)")
    judges = parser.add_mutually_exclusive_group()
    judges.add_argument("--rule", action="store_true", help="score with the grounded rule judge (no model)")
    judges.add_argument("--reference", action="store_true",
                        help="score with the reference judge, a CONTROL that reads each line's ground_truth")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for flag, name in CLI_OPTIONS.items():
        meta, base = fields[name].metadata, field_types()[name]
        metavar = "|".join(meta["choices"]) if meta.get("choices") else METAVARS.get(flag, base.__name__.upper())
        aliases = [f"--{flag}"] + ([f"--{name}"] if name != flag else [])
        parser.add_argument(*aliases, dest=name, default=argparse.SUPPRESS, metavar=metavar,
                            help=f"{meta['help']} (default: {fields[name].default!r})")
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: dict):
    """The validated Config these options describe; exits with a message naming a bad option."""
    from ..config import ConfigError, from_dict
    from . import check_judge

    rule, reference = args.pop("rule"), args.pop("reference")
    args.pop("input"), args.pop("output")
    chosen = [f"--{flag}" for flag in ("model", "url") if args.get(CLI_OPTIONS[flag])]
    instant = "--rule" if rule else "--reference" if reference else None
    if instant and chosen:
        parser.error(f"{instant} and {' and '.join(chosen)}: choose one judge")
    if not instant and not chosen:
        parser.error("choose the judge: --model PATH (a local model), --url URL (a server), --rule or --reference")
    kind = "rule" if rule else "reference" if reference else "llm"
    try:
        config = from_dict({"judge": kind, **args}).validate()
        check_judge(config.judge_options(), connect=False)  # its files and variables; the server: later
        return config
    except (ConfigError, ValueError) as err:
        parser.error(str(err))


def make_cli_judge(config):
    """The judge the trainer would build for this config (minus the policy: none is loaded here)."""
    from . import build_judge, check_judge

    options = config.judge_options()
    server = check_judge(options)
    if config.judge_model:
        from ..train import _quiet_third_party_logs

        _quiet_third_party_logs()
    return build_judge(options, server=server)


def check_output(path: str | None) -> None:
    """ValueError unless ``path`` (if any) can be written: before any request is sent."""
    if not path:
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"--output {path}: is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--output {path}: no such directory {parent}")
    if not os.access(target if target.exists() else parent, os.W_OK):
        raise ValueError(f"--output {path}: not writable")


# ----------------------------------------------------------------------------------------------
# input and output
# ----------------------------------------------------------------------------------------------

def read_requests(path: str) -> list[tuple[dict, object]]:
    """(record, JudgeRequest) per non-empty line; ValueError naming ``file:line`` for a bad record."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--input {path}: no such file")
    pairs = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            request = request_of(record)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{path}:{number}: {err}") from None
        pairs.append((dict(record, line=number), request))
    return pairs


def request_of(record) -> object:
    from ..toolcall import ToolCall, normalize_tools, parse_completion
    from .base import JudgeRequest

    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    tools = record.get("tools") or []
    try:
        normalize_tools(tools)
    except ValueError as err:
        raise ValueError(f"'tools': {err}") from None
    if "completion" in record:
        if not isinstance(record["completion"], str):
            raise ValueError("'completion' must be a string")
        parsed = parse_completion(record["completion"])
        reasoning, calls, malformed = parsed.reasoning, parsed.calls, parsed.error is not None
    elif "reasoning" in record:
        reasoning = record["reasoning"]
        if reasoning is not None and not isinstance(reasoning, str):
            raise ValueError("'reasoning' must be a string or null")
        calls = [ToolCall(str(c["name"]), dict(c.get("arguments") or {})) for c in record.get("calls") or []]
        malformed = False
    else:
        raise ValueError("needs 'completion' (the model's output) or 'reasoning'")
    truth = record.get("ground_truth")
    if truth is not None and not isinstance(truth, list):
        raise ValueError("'ground_truth' must be a list (the task's answer)")
    return JudgeRequest(_request_text(record), reasoning, calls, tools, truth, malformed)


def _request_text(record: dict) -> str:
    for key in ("prompt", "question"):
        if isinstance(record.get(key), str):
            return record[key]
    users = [m.get("content") for m in record.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    if users and isinstance(users[-1], str):
        return users[-1]
    raise ValueError("needs the user's request: 'prompt', 'question' or 'messages'")


def output_record(record: dict, verdict, parts: dict | None = None) -> dict:
    out = {"line": record["line"]}
    if "id" in record:
        out["id"] = record["id"]
    out.update(score=None if math.isnan(verdict.score) else verdict.score, status=verdict.status, reply=verdict.reply)
    if parts is not None:
        out["parts"] = {name: round(value, 4) for name, value in parts.items()}
    return out


def rule_parts(judge, request, verdict) -> dict | None:
    """The rule judge's four parts for a completion it judged (None for other judges and for a completion
    scored without being judged: its verdict says so)."""
    from .rule import RuleJudge

    if not isinstance(judge, RuleJudge) or verdict.status != "scored":
        return None
    return judge.parts(request.prompt, request.reasoning, request.calls, request.tools)


def summary(judge, verdicts: list) -> str:
    counts = {}
    for verdict in verdicts:
        counts[verdict.status] = counts.get(verdict.status, 0) + 1
    valid = [v.score for v in verdicts if not math.isnan(v.score)]
    mean = f"{sum(valid) / len(valid):.3f}" if valid else "n/a"
    lines = [f"judge: {getattr(judge, 'name', type(judge).__name__)}",
             f"{len(verdicts)} completions: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
             f"mean score {mean} over {len(valid)} scored"]
    stats = getattr(judge, "stats", None)
    if stats is not None and stats.requests:
        lines.append(f"judge requests {stats.requests}: {stats.failed} failed, {stats.unreadable} unreadable; "
                     f"{stats.latency_s:.2f} s ({stats.latency_s / stats.requests:.3f} s per request)"
                     + (f"; last error: {stats.last_error}" if stats.last_error else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    input_path, output_path = args["input"], args["output"]
    config = config_from_args(parser, args)
    from .base import verdicts_of

    try:
        check_output(output_path)
        pairs = read_requests(input_path)
        if config.judge == "reference":
            missing = [record["line"] for record, request in pairs if request.ground_truth is None]
            if missing:
                raise ValueError(f"{input_path}:{missing[0]}: --reference needs 'ground_truth' on every line")
        judge = make_cli_judge(config)
    except ValueError as err:
        print(f"python -m awpo.judge: error: {err}", file=sys.stderr)
        return 2
    verdicts = verdicts_of(judge, [request for _, request in pairs])
    lines = [json.dumps(output_record(record, verdict, rule_parts(judge, request, verdict)), ensure_ascii=False)
             for (record, request), verdict in zip(pairs, verdicts)]
    text = "\n".join(lines) + ("\n" if lines else "")
    if output_path:
        Path(output_path).expanduser().write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(summary(judge, verdicts), file=sys.stderr)
    stats = getattr(judge, "stats", None)
    return 1 if stats is not None and stats.requests and stats.scored == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
