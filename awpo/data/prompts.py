"""How every built-in task opens: a short system instruction, then two worked example exchanges.

A 135M model produces well-formed calls only when it sees an example (docs/ENVIRONMENT.md). Shown as a
prior user/assistant exchange, the example is imitated far more often than inside the system message.
A fixed example is copied literally (SmolLM2-135M then fills every tool with the example's argument
names), so each single-turn task gets its own: a request for one of the task's offered tools, phrased
from the same split's templates, with values that differ from every ground-truth call (built in
``builtin.py``). It shows the format and the offered tool's parameter names, never the answer: the
policy still has to pick the tool, fill the values from the request and decide how many calls to make.
A fixed second exchange, ``NO_CALL_EXAMPLE``, answers a request that no tool fits without a call:
with the call example alone the policy learns to call something on every request.
Multi-turn tasks use one fixed example with a tool outside their environment (``DICE_EXAMPLE``).
"""

import json

SYSTEM_PROMPT = ("You can call tools. Think briefly in <think></think>, then write one <tool_call> block per call. "
                 "If no tool fits, say so and call nothing.")

MULTI_TURN_NOTE = " Tool results come back to you. When a request is done, answer briefly without a tool call."


def worked_example(request: str, tool: str, arguments: dict) -> list[dict]:
    """A user request and the assistant turn that answers it with one call (OpenAI ``tool_calls``)."""
    values = ", ".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in arguments.items())
    return [{"role": "user", "content": request},
            {"role": "assistant", "content": f"<think>This needs {tool} with {values}.</think>",
             "tool_calls": [{"type": "function", "function": {"name": tool, "arguments": arguments}}]}]


NO_CALL_EXAMPLE = [
    {"role": "user", "content": "Tell me a fun fact about owls."},
    {"role": "assistant", "content": "<think>No offered tool gives facts about animals, so I call nothing.</think>\n"
                                     "Owls can turn their heads about 270 degrees."},
]

DICE_TOOL = {
    "name": "roll_dice",
    "description": "Roll dice.",
    "parameters": {"type": "object",
                   "properties": {"sides": {"type": "integer"}, "count": {"type": "integer", "default": 1}},
                   "required": ["sides"]},
}
DICE_EXAMPLE = worked_example("Roll two six-sided dice for me.", "roll_dice", {"sides": 6, "count": 2})
