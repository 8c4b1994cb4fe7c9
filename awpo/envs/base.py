"""Base class of the stateful tool environments used by multi-turn tasks.

An environment exposes a fixed set of tools (BFCL function docs in ``TOOL_DOCS``), each served by a
method ``tool_<name>``. ``execute`` dispatches only to those registered names, after checking the
parsed arguments against the tool's schema; it returns the tool result as text, and reports every
problem (unknown tool, bad arguments, a failing operation) as ``"Error: ..."`` text, never as an
exception, since the caller feeds the result back to the model. Model text is never evaluated.
"""

from __future__ import annotations

import copy
import json

from ..toolcall import ToolCall

_PYTHON_TYPES = {
    "string": (str,),
    "integer": (int,),
    "float": (int, float), "number": (int, float),  # an int is a fine float
    "boolean": (bool,),
    "array": (list,), "tuple": (list,),
    "dict": (dict,), "object": (dict,),
}
MAX_STRING_CHARS = 10_000


class ToolError(Exception):
    """An operation failed for a reason the model should read (e.g. "no such file")."""


class ToolEnv:
    """Subclasses set ``name``, ``TOOL_DOCS``, implement ``tool_<name>`` methods and ``state()``."""

    name: str = ""
    TOOL_DOCS: list[dict] = []

    def tools(self) -> list[dict]:
        return copy.deepcopy(self.TOOL_DOCS)

    def state(self) -> dict:
        raise NotImplementedError

    def outcome_state(self) -> dict:
        """The part of the state that decides whether an episode succeeded (default: all of it)."""
        return self.state()

    def execute(self, call: ToolCall | dict) -> str:
        name, arguments = _call_parts(call)
        doc = self._doc(name)
        if doc is None:
            known = ", ".join(d["name"] for d in self.TOOL_DOCS)
            return f"Error: unknown tool {name!r}. Available tools: {known}."
        problem = check_arguments(arguments, doc)
        if problem is not None:
            return f"Error: {problem}"
        handler = getattr(self, f"tool_{doc['name']}")  # name comes from TOOL_DOCS, not from the model
        try:
            result = handler(**arguments)
        except ToolError as exc:
            return f"Error: {exc}"
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)

    def _doc(self, name) -> dict | None:
        for doc in self.TOOL_DOCS:
            if doc["name"] == name:
                return doc
        return None


def _call_parts(call) -> tuple[object, object]:
    if isinstance(call, ToolCall):
        return call.name, call.arguments
    if isinstance(call, dict):
        return call.get("name"), call.get("arguments", {})
    return None, None


def check_arguments(arguments, doc: dict) -> str | None:
    """None when ``arguments`` fit the tool's schema, else the reason (for the model to read)."""
    name = doc["name"]
    if not isinstance(arguments, dict):
        return f"arguments of {name} must be a JSON object"
    properties = doc["parameters"]["properties"]
    unknown = sorted(set(arguments) - set(properties))
    if unknown:
        return f"{name} got unexpected arguments {unknown}; it takes {sorted(properties)}"
    missing = [p for p in doc["parameters"].get("required", []) if p not in arguments]
    if missing:
        return f"{name} is missing required arguments {missing}"
    for param, value in arguments.items():
        spec = properties[param]
        allowed = _PYTHON_TYPES.get(spec.get("type"), (object,))
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            return f"argument {param!r} of {name} must be of type {spec.get('type')}, got {type(value).__name__}"
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            return f"argument {param!r} of {name} is longer than {MAX_STRING_CHARS} characters"
        if "enum" in spec and value not in spec["enum"]:
            return f"argument {param!r} of {name} must be one of {spec['enum']}, got {value!r}"
    return None
