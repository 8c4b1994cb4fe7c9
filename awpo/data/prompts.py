"""The system message of the built-in tasks: the call format and ONE worked example.

A 135M model produces well-formed calls only when it sees an example (ENVIRONMENT.md), so every
built-in task starts with this message. The example uses a tool that is not in the library, so it
teaches the format without giving away any task's answer. It is kept short: CPU rollouts pay for
every prompt token.
"""

SYSTEM_PROMPT = """You can call tools. Think briefly in <think></think>, then write one <tool_call> block per call. If no tool fits, say so and call nothing.
Example, for "What is 12 times 7?" with a tool multiply(a, b):
<think>The user wants 12 times 7, so multiply with a=12, b=7.</think>
<tool_call>
{"name": "multiply", "arguments": {"a": 12, "b": 7}}
</tool_call>"""

MULTI_TURN_NOTE = "\nTool results come back to you. When a request is done, answer briefly without a tool call."
