"""Generation glue: BFCL conversations in, completion texts out, one failure never sinks a batch.

A *generate function* takes a batch of ``GenerationRequest`` (the chat messages so far and the BFCL
function docs, plus where in which entry the model is) and returns one completion text per request,
or an exception instance for a request that failed. The real one renders each conversation with the
model's chat template (``awpo.toolcall.render_prompt``) and samples greedily from a rollout engine;
tests plug in scripted models with the same signature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    entry_id: str
    category: str
    messages: list[dict]  # BFCL chat history: system/user/assistant (maybe with tool_calls)/tool
    tools: list[dict]  # BFCL function docs
    turn: int = 0  # multi-turn: index of the user turn
    step: int = 0  # multi-turn: model calls already made in this turn


GenerateFn = Callable[[list[GenerationRequest]], list["str | BaseException"]]


@dataclass
class GenerationResult:
    text: str | None
    error: str | None  # why there is no text


def generate_all(generate_fn: GenerateFn, requests: list[GenerationRequest]) -> list[GenerationResult]:
    """Run ``generate_fn`` on the batch; if the batch call itself fails, retry request by request so
    that only the requests that really fail are recorded as failed (with the reason)."""
    if not requests:
        return []
    try:
        return [_as_result(output) for output in _checked_call(generate_fn, requests)]
    except Exception as exc:
        if len(requests) == 1:
            return [GenerationResult(None, _describe(exc))]
        logger.warning("batch generation failed (%s); retrying %d requests one by one", _describe(exc), len(requests))
    return [generate_all(generate_fn, [request])[0] for request in requests]


def _checked_call(generate_fn: GenerateFn, requests: list[GenerationRequest]) -> list:
    outputs = generate_fn(requests)
    if not isinstance(outputs, list) or len(outputs) != len(requests):
        raise ValueError(f"generate_fn returned {type(outputs).__name__} of length "
                         f"{len(outputs) if isinstance(outputs, list) else '?'} for {len(requests)} requests")
    return outputs


def _as_result(output) -> GenerationResult:
    if isinstance(output, BaseException):
        return GenerationResult(None, _describe(output))
    if not isinstance(output, str):
        return GenerationResult(None, f"generate_fn returned {type(output).__name__}, expected str")
    return GenerationResult(output, None)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------------
# rendering BFCL conversations for a chat template
# ----------------------------------------------------------------------------------------------


def hermes_messages(messages: list[dict]) -> list[dict]:
    """BFCL's chat history as plain ``{"role", "content"}`` messages in the Hermes convention.

    BFCL's Qwen-FC handler keeps an assistant step as ``tool_calls`` with empty content and each
    result as a ``tool`` message. Many chat templates (SmolLM2's ChatML among them) render only
    ``content``, so calls become ``<tool_call>`` blocks in the assistant text and consecutive tool
    results one user message of ``<tool_response>`` blocks: the text Qwen's own template produces.
    """
    from awpo.toolcall import format_tool_calls

    plain: list[dict] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = [call.get("function", call) for call in message["tool_calls"]]
            calls_text = format_tool_calls([{"name": c["name"], "arguments": _arguments(c)} for c in calls])
            plain.append({"role": "assistant", "content": f"{content}\n{calls_text}".strip()})
        elif role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if plain and plain[-1].get("_tool_results"):
                plain[-1]["content"] += "\n" + block
            else:
                plain.append({"role": "user", "content": block, "_tool_results": True})
        else:
            plain.append({"role": role, "content": content})
    return [{"role": m["role"], "content": m["content"]} for m in plain]


def _arguments(call: dict) -> dict:
    import json

    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return {}
    return arguments if isinstance(arguments, dict) else {}


def render_request(tokenizer, request: GenerationRequest) -> str:
    """The prompt text for one request, with the model's chat template."""
    from awpo.toolcall import render_prompt

    return render_prompt(tokenizer, hermes_messages(request.messages), request.tools)


def engine_generate_fn(engine, tokenizer, *, max_tokens: int, max_model_len: int | None = None,
                       temperature: float = 0.0) -> GenerateFn:
    """A generate function over a rollout engine (``awpo.rollout.make_engine``): greedy by default.

    Requests whose prompt leaves no room for ``max_tokens`` in ``max_model_len`` fail with a reason
    instead of failing the whole batch in the engine.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")

    def generate(requests: list[GenerationRequest]) -> list:
        outputs: list = [None] * len(requests)
        prompts, positions = [], []
        for index, request in enumerate(requests):
            try:
                prompt = render_request(tokenizer, request)
            except Exception as exc:
                outputs[index] = exc
                continue
            length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if max_model_len is not None and length + max_tokens > max_model_len:
                outputs[index] = ValueError(f"prompt has {length} tokens; with max_tokens={max_tokens} it "
                                            f"exceeds the model context of {max_model_len}")
                continue
            prompts.append(prompt)
            positions.append(index)
        if prompts:
            samples = engine.generate(prompts, n=1, temperature=temperature, max_tokens=max_tokens)
            for index, completions in zip(positions, samples):
                outputs[index] = completions[0].text
        return outputs

    return generate
