"""Tool-call format: render tool schemas into a prompt, parse the calls out of a completion.

The format is the Hermes / Qwen one that BFCL's ``-FC`` handlers parse (docs/SPEC.md section 4)::

    <think>optional reasoning</think>
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Model output is untrusted: ``parse_completion`` reads it with ``json`` only, caps its size, its JSON
nesting depth, its integer literals' length and its number of calls, and never raises. Any
malformed piece (bad JSON, non-finite numbers such as ``NaN`` or ``1e400``, strings that are not
valid UTF-8 such as a lone ``"\\ud800"``, unknown keys, unclosed tags, non-object arguments, ...)
makes the whole completion "no valid call" with a reason in ``error``: a reward must not credit
half-broken output.

Deliberate choices (they keep the training reward aligned with what BFCL's Qwen-FC decoder accepts):

- the JSON must sit on its own lines, ``<tool_call>\\n{...}\\n</tool_call>``, as BFCL's regex wants;
- ``"parameters"`` is NOT accepted as an alias of ``"arguments"`` (BFCL's decoder rejects it), and
  neither are extra keys such as ``"id"``; ``arguments`` must be a JSON object, not a JSON string;
- tool calls inside the ``<think>`` block are reasoning, not calls (BFCL decodes only the text
  after ``</think>``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

MAX_COMPLETION_CHARS = 64 * 1024
MAX_JSON_DEPTH = 16
MAX_CALLS = 32
MAX_INT_DIGITS = 100  # longer integer literals are malformed (they would overflow float comparisons)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
CALL_KEYS = ("name", "arguments")

# BFCL's function docs use Python-flavoured type names; chat templates expect JSON schema.
BFCL_TO_JSON_SCHEMA_TYPE = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ParsedCompletion:
    reasoning: str | None  # text inside <think>...</think>, None when absent
    calls: list[ToolCall]  # valid calls, in order; empty whenever error is set
    final_text: str  # text outside think / tool_call blocks, stripped
    error: str | None  # why the output is malformed; None when it is well formed

    @property
    def ok(self) -> bool:
        return self.error is None


# ----------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------


def parse_completion(text: str) -> ParsedCompletion:
    """Split a completion into reasoning, tool calls and final text. Never raises."""
    if not isinstance(text, str):
        return ParsedCompletion(None, [], "", f"completion is a {type(text).__name__}, not a string")
    if len(text) > MAX_COMPLETION_CHARS:
        return ParsedCompletion(None, [], "", f"completion longer than {MAX_COMPLETION_CHARS} characters")
    reasoning, rest, error = _split_reasoning(text)
    if error is not None:
        return ParsedCompletion(reasoning, [], rest.strip(), error)
    calls, final_text, error = _extract_calls(rest)
    if error is not None:
        return ParsedCompletion(reasoning, [], final_text, error)
    return ParsedCompletion(reasoning, calls, final_text, None)


def _split_reasoning(text: str) -> tuple[str | None, str, str | None]:
    """-> (reasoning, the text outside the think block, error)."""
    open_at, close_at = text.find(THINK_OPEN), text.find(THINK_CLOSE)
    if close_at < 0:
        if open_at < 0:
            return None, text, None
        return text[open_at + len(THINK_OPEN) :].strip(), text[:open_at], "unclosed <think> block"
    if open_at > close_at:
        open_at = -1  # '</think>' first: the chat template opened the block inside the prompt
    start = open_at + len(THINK_OPEN) if open_at >= 0 else 0
    before = text[:open_at] if open_at >= 0 else ""
    reasoning = text[start:close_at].strip()
    after = text[close_at + len(THINK_CLOSE) :]
    if THINK_OPEN in after or THINK_CLOSE in after:
        return reasoning, before + after, "more than one <think> block"
    if THINK_OPEN in reasoning:
        return reasoning, before + after, "nested <think> tag"
    return reasoning, before + after, None


def _extract_calls(text: str) -> tuple[list[ToolCall], str, str | None]:
    """-> (calls, final text, error). Scans left to right; the first problem wins."""
    calls: list[ToolCall] = []
    outside: list[str] = []
    pos = 0
    while True:
        open_at = text.find(CALL_OPEN, pos)
        piece = text[pos:] if open_at < 0 else text[pos:open_at]
        outside.append(piece)
        if CALL_CLOSE in piece:
            return [], _join(outside), f"{CALL_CLOSE} without an opening {CALL_OPEN}"
        if open_at < 0:
            return calls, _join(outside), None
        body_start = open_at + len(CALL_OPEN)
        close_at = text.find(CALL_CLOSE, body_start)
        if close_at < 0:
            return [], _join(outside), f"unclosed {CALL_OPEN} block"
        body = text[body_start:close_at]
        if CALL_OPEN in body:
            return [], _join(outside), f"nested {CALL_OPEN} tag"
        if len(calls) == MAX_CALLS:
            return [], _join(outside), f"more than {MAX_CALLS} tool calls"
        call, error = parse_call_body(body)
        if error is not None:
            return [], _join(outside), f"tool call {len(calls) + 1}: {error}"
        calls.append(call)
        pos = close_at + len(CALL_CLOSE)


def _join(pieces: list[str]) -> str:
    return " ".join(p.strip() for p in pieces if p.strip())


def parse_call_body(body: str) -> tuple[ToolCall | None, str | None]:
    """The text between <tool_call> and </tool_call> -> (call, None) or (None, reason)."""
    if not (body.startswith("\n") and body.endswith("\n")):
        return None, "the JSON must be on its own line: '<tool_call>\\n{...}\\n</tool_call>'"
    try:
        obj = json.loads(body, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant,
                         parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        return None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError as exc:  # JSONDecodeError, duplicate keys, NaN, infinite floats, over-long integers
        return None, f"invalid JSON ({exc})"
    if json_depth(obj) > MAX_JSON_DEPTH:
        return None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    if not _is_utf8(obj):
        return None, "a string is not valid UTF-8 (lone surrogate)"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if "parameters" in obj and "arguments" not in obj:
        return None, "use the key 'arguments', not 'parameters'"
    unknown = sorted(set(obj) - set(CALL_KEYS))
    if unknown:
        return None, f"unknown keys {unknown} (allowed: {list(CALL_KEYS)})"
    missing = [k for k in CALL_KEYS if k not in obj]
    if missing:
        return None, f"missing keys {missing}"
    name, arguments = obj["name"], obj["arguments"]
    if not isinstance(name, str) or not name.strip():
        return None, "'name' must be a non-empty string"
    if not isinstance(arguments, dict):
        return None, f"'arguments' must be a JSON object, got {type(arguments).__name__}"
    return ToolCall(name=name, arguments=arguments), None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:30]} is not finite")
    return value


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer longer than {MAX_INT_DIGITS} digits")
    return int(literal)


def _is_utf8(obj) -> bool:
    """Whether every string of a parsed JSON value (keys included) encodes as UTF-8."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_depth(obj) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), computed without recursion."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        depth = max(depth, level)
        if level > MAX_JSON_DEPTH:
            return level
        stack.extend((child, level + 1) for child in children)
    return depth


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------


def format_tool_calls(calls: list[ToolCall] | list[dict]) -> str:
    """Render calls as the completion text the parser reads back, one block per call.

    A call may be a ``ToolCall``, ``{"name": ..., "arguments": {...}}``, or BFCL's one-key form
    ``{name: {...}}``.
    """
    blocks = []
    for index, call in enumerate(calls):
        name, arguments = _call_parts(call, index)
        payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        blocks.append(f"{CALL_OPEN}\n{payload}\n{CALL_CLOSE}")
    return "\n".join(blocks)


def _call_parts(call, index: int) -> tuple[str, dict]:
    if isinstance(call, ToolCall):
        return call.name, call.arguments
    if isinstance(call, dict) and set(call) == {"name", "arguments"}:
        return call["name"], call["arguments"]
    if isinstance(call, dict) and len(call) == 1:
        (name, arguments), = call.items()
        if isinstance(arguments, dict):
            return name, arguments
    raise ValueError(f"calls[{index}] must be a ToolCall, {{'name', 'arguments'}} or {{name: arguments}}, got {call!r}")


# ----------------------------------------------------------------------------------------------
# tool schemas and prompts
# ----------------------------------------------------------------------------------------------


def normalize_tools(tools: list[dict]) -> list[dict]:
    """BFCL function docs or OpenAI tools -> ``{"name", "description", "parameters"}`` in JSON schema.

    Unwraps ``{"type": "function", "function": {...}}`` and renames BFCL's types (``dict`` ->
    ``object``, ``float`` -> ``number``, ``tuple`` -> ``array``, ``any`` -> ``string``, as BFCL
    itself does for FC models). The input is not modified.
    """
    if not isinstance(tools, list):
        raise ValueError(f"tools must be a list of dicts, got {type(tools).__name__}")
    return [_normalize_tool(tool, index) for index, tool in enumerate(tools)]


def _normalize_tool(tool, index: int) -> dict:
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
        raise ValueError(f"tools[{index}] must be a function doc with a non-empty 'name', got {tool!r}")
    parameters = tool.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ValueError(f"tools[{index}]['parameters'] must be a dict, got {type(parameters).__name__}")
    return {
        "name": tool["name"],
        "description": str(tool.get("description", "")),
        "parameters": _json_schema_types(copy.deepcopy(parameters)),
    }


def _json_schema_types(schema):
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "type" and isinstance(value, str):
                schema[key] = BFCL_TO_JSON_SCHEMA_TYPE.get(value, value)
            elif key == "type" and isinstance(value, list):
                schema[key] = [BFCL_TO_JSON_SCHEMA_TYPE.get(v, v) if isinstance(v, str) else v for v in value]
            elif key not in ("enum", "default", "examples", "const"):
                _json_schema_types(value)
    elif isinstance(schema, list):
        for item in schema:
            _json_schema_types(item)
    return schema


def hermes_system_prompt(tools: list[dict], *, with_format: bool = True) -> str:
    """A short Hermes-style system prompt: the tools as compact JSON, then the exact call format
    (left out with ``with_format=False``, when the system message already shows it)."""
    listing = "\n".join(json.dumps(tool, ensure_ascii=False, separators=(",", ":")) for tool in normalize_tools(tools))
    prompt = f"You can call these tools:\n<tools>\n{listing}\n</tools>"
    if with_format:
        prompt += (
            "\nTo call a tool, write one block per call:\n"
            f'{CALL_OPEN}\n{{"name": <tool-name>, "arguments": <arguments-as-json-object>}}\n{CALL_CLOSE}'
        )
    return prompt


def with_tool_system_prompt(messages: list[dict], tools: list[dict]) -> list[dict]:
    """The messages with the Hermes tool listing put in front of (or as) the system message.

    The call format is spelled out unless the system message already mentions ``<tool_call>`` (the
    built-in tasks' does, and their worked example exchanges show the format), which saves prompt tokens.
    """
    has_system = bool(messages) and messages[0].get("role") == "system"
    shows_format = has_system and CALL_OPEN in str(messages[0].get("content", ""))
    header = hermes_system_prompt(tools, with_format=not shows_format)
    if has_system:
        first = dict(messages[0], content=f"{header}\n\n{messages[0].get('content', '')}")
        return [first, *messages[1:]]
    return [{"role": "system", "content": header}, *messages]


def render_prompt(tokenizer, messages: list[dict], tools: list[dict], *, add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` with ``tools`` available.

    Uses the chat template's own ``tools=`` support when it has one (detected by rendering with and
    without tools: the template supports tools when every tool name shows up in the difference),
    and a Hermes-style system prompt otherwise (e.g. SmolLM2, whose template ignores ``tools``).
    """
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("messages must be a list of {'role', 'content'} dicts")
    if not tools:
        return _apply_template(tokenizer, messages, None, add_generation_prompt)
    template_tools = [{"type": "function", "function": tool} for tool in normalize_tools(tools)]
    if template_supports_tools(tokenizer, messages, template_tools):
        return _apply_template(tokenizer, messages, template_tools, add_generation_prompt)
    hermes = with_tool_system_prompt(hermes_conversation(messages), tools)
    return _apply_template(tokenizer, hermes, None, add_generation_prompt)


def tool_result_message(result: str) -> dict:
    """The chat message that hands a tool's result back to the model (OpenAI / Qwen role "tool")."""
    return {"role": "tool", "content": result}


def hermes_conversation(messages: list[dict]) -> list[dict]:
    """Messages for a template that knows nothing of tools: an assistant message's ``tool_calls``
    become ``<tool_call>`` blocks in its content, and tool results are wrapped in
    ``<tool_response>`` tags, as Hermes-style prompts show them."""
    converted = []
    for message in messages:
        content = str(message.get("content") or "")
        if message.get("role") == "tool":
            converted.append({"role": "tool", "content": f"<tool_response>\n{content}\n</tool_response>"})
        elif message.get("role") == "assistant" and message.get("tool_calls"):
            calls = [_openai_call(call) for call in message["tool_calls"]]
            text = "\n".join(part for part in (content.strip(), format_tool_calls(calls)) if part)
            converted.append({"role": "assistant", "content": text})
        else:
            converted.append(message)
    return converted


def _openai_call(call: dict) -> dict:
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI stores arguments as a JSON string
        arguments = json.loads(arguments) if arguments.strip() else {}
    return {"name": function["name"], "arguments": arguments}


def template_supports_tools(tokenizer, messages: list[dict], template_tools: list[dict]) -> bool:
    try:
        plain = _apply_template(tokenizer, messages, None, False)
        with_tools = _apply_template(tokenizer, messages, template_tools, False)
    except Exception as exc:  # a template that chokes on tools= simply does not support it
        logger.debug("chat template failed with tools=: %s", exc)
        return False
    names = [tool["function"]["name"] for tool in template_tools]
    return with_tools != plain and all(name in with_tools for name in names)


def _apply_template(tokenizer, messages, tools, add_generation_prompt: bool) -> str:
    kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools is not None:
        kwargs["tools"] = tools
    text = tokenizer.apply_chat_template(messages, **kwargs)
    if not isinstance(text, str):
        raise ValueError(f"tokenizer.apply_chat_template returned {type(text).__name__}, expected str")
    return text
