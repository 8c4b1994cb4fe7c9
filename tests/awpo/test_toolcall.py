"""awpo.toolcall: parsing untrusted completions, formatting calls, rendering tools into prompts."""

import json
import random

import pytest

from awpo.toolcall import (
    MAX_CALLS,
    MAX_COMPLETION_CHARS,
    MAX_JSON_DEPTH,
    ToolCall,
    format_tool_calls,
    hermes_system_prompt,
    normalize_tools,
    parse_completion,
    render_prompt,
    tool_result_message,
)

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "parameters": {"type": "dict", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                  "scale": {"type": "float"}}, "required": ["city"]},
}


def block(payload) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return f"<tool_call>\n{text}\n</tool_call>"


def test_parses_reasoning_calls_and_final_text():
    text = ("<think>The user wants Paris weather.</think>\n"
            + block({"name": "get_weather", "arguments": {"city": "Paris"}}) + "\n"
            + block({"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}) + "\nDone.")
    parsed = parse_completion(text)
    assert parsed.error is None
    assert parsed.reasoning == "The user wants Paris weather."
    assert parsed.calls == [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Oslo", "days": 3})]
    assert parsed.final_text == "Done."


def test_plain_text_has_no_calls_and_no_error():
    parsed = parse_completion("None of these tools can write poems, sorry.")
    assert parsed.calls == [] and parsed.error is None and parsed.reasoning is None
    assert parsed.final_text == "None of these tools can write poems, sorry."


def test_close_think_only_takes_text_before_it_as_reasoning():
    # templates that open <think> inside the prompt leave only the closing tag in the completion
    parsed = parse_completion("weighing options</think>\n" + block({"name": "f", "arguments": {}}))
    assert parsed.reasoning == "weighing options"
    assert parsed.calls == [ToolCall("f", {})]


def test_calls_inside_think_are_not_calls():
    text = "<think>maybe " + block({"name": "f", "arguments": {}}) + "</think>Nothing fits."
    parsed = parse_completion(text)
    assert parsed.calls == [] and parsed.error is None and parsed.final_text == "Nothing fits."


@pytest.mark.parametrize("text, reason", [
    ("<think>never closed " + block({"name": "f", "arguments": {}}), "unclosed <think>"),
    ("<think>a</think><think>b</think>", "more than one <think>"),
    (block('{"name": "f", "arguments": {'), "invalid JSON"),
    (block('{"name": "f", "arguments": {}, "id": 3}'), "unknown keys"),
    (block('{"name": "f", "parameters": {"x": 1}}'), "'arguments', not 'parameters'"),
    (block('{"name": "f"}'), "missing keys"),
    (block('{"name": "f", "arguments": "{\\"x\\": 1}"}'), "'arguments' must be a JSON object"),
    (block('{"name": "f", "arguments": [1, 2]}'), "'arguments' must be a JSON object"),
    (block('{"name": "", "arguments": {}}'), "'name' must be a non-empty string"),
    (block('{"name": 7, "arguments": {}}'), "'name' must be a non-empty string"),
    (block('[{"name": "f", "arguments": {}}]'), "expected a JSON object"),
    (block('{"name": "f", "name": "g", "arguments": {}}'), "duplicate key"),
    (block('{"name": "f", "arguments": {"x": NaN}}'), "NaN is not valid JSON"),
    (block('{"name": "f", "arguments": {"x": ' + "9" * 5000 + "}}"), "invalid JSON"),
    (block('{"name": "f", "arguments": {"x": ' + "9" * 400 + "}}"), "longer than 100 digits"),
    (block('{"name": "f", "arguments": {"x": -' + "9" * 101 + "}}"), "longer than 100 digits"),
    (block('{"name": "f", "arguments": {"temp": 1e400}}'), "not finite"),
    (block('{"name": "f", "arguments": {"temp": [-1E+999]}}'), "not finite"),
    # lone surrogates (JSON escapes in the model text) would crash the tokenizer later
    (block('{"name": "mkdir", "arguments": {"dir_name": "a\\ud800"}}'), "not valid UTF-8"),
    (block('{"name": "f\\udfff", "arguments": {}}'), "not valid UTF-8"),
    (block('{"name": "f", "arguments": {"k\\ud800": 1}}'), "not valid UTF-8"),
    (block('{"name": "f", "arguments": {"x": [{"y": ["ok", "\\udc00z"]}]}}'), "not valid UTF-8"),
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "own line"),
    ("<tool_call>\n" + '{"name": "f", "arguments": {}}', "unclosed <tool_call>"),
    ('{"name": "f", "arguments": {}}\n</tool_call>', "without an opening"),
    ("<tool_call>\n<tool_call>\n{}\n</tool_call>", "nested <tool_call>"),
])
def test_malformed_output_is_no_valid_call_with_a_reason(text, reason):
    parsed = parse_completion(text)
    assert parsed.calls == []
    assert parsed.error is not None and reason in parsed.error, parsed.error


def test_numbers_and_unicode_at_the_limits_still_parse():
    text = block('{"name": "f", "arguments": {"n": -' + "9" * 100 + ', "t": 1e308, "s": 1e-400, "e": "\\ud83d\\ude00 \\u00e9"}}')
    parsed = parse_completion(text)
    assert parsed.error is None
    assert parsed.calls[0].arguments == {"n": -int("9" * 100), "t": 1e308, "s": 0.0, "e": "\U0001F600 \u00e9"}
    parsed.calls[0].arguments["e"].encode("utf-8")


def test_one_bad_block_voids_the_good_ones():
    text = block({"name": "f", "arguments": {"a": 1}}) + "\n" + block('{"name": "g", "arguments": oops}')
    parsed = parse_completion(text)
    assert parsed.calls == [] and "tool call 2" in parsed.error


def test_size_depth_and_count_caps():
    huge = block({"name": "f", "arguments": {"x": "a" * MAX_COMPLETION_CHARS}})
    assert "longer than" in parse_completion(huge).error

    def nested(depth):  # the call object is level 1, its arguments level 2, then lists
        value = 1
        for _ in range(depth - 2):
            value = [value]
        return {"name": "f", "arguments": {"x": value}}

    assert parse_completion(block(nested(MAX_JSON_DEPTH))).error is None
    assert "deeper than" in parse_completion(block(nested(MAX_JSON_DEPTH + 1))).error
    # far past Python's recursion limit: must not raise RecursionError
    assert "deeper than" in parse_completion(block('{"name": "f", "arguments": {"x": ' + "[" * 20000 + "]" * 20000 + "}}")).error
    many = "\n".join(block({"name": "f", "arguments": {"i": i}}) for i in range(MAX_CALLS + 1))
    assert "more than" in parse_completion(many).error
    exact = "\n".join(block({"name": "f", "arguments": {"i": i}}) for i in range(MAX_CALLS))
    assert len(parse_completion(exact).calls) == MAX_CALLS


@pytest.mark.parametrize("value", [None, b"<tool_call>", 42, ["a"]])
def test_non_string_input_never_raises(value):
    parsed = parse_completion(value)
    assert parsed.calls == [] and "not a string" in parsed.error


def test_random_junk_never_raises():
    rng = random.Random(1234)
    pieces = ["<think>", "</think>", "<tool_call>", "</tool_call>", "\n", "{", "}", "[", "]", '"name"', '"arguments"',
              ":", ",", '"f"', "1e999", "null", "true", "\\u0000", "é", " ", "parameters", "NaN",
              '"\\ud800"', "9" * 120]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        parsed = parse_completion(text)
        assert isinstance(parsed.calls, list)
        assert parsed.error is None or parsed.calls == []
        for call in parsed.calls:
            assert isinstance(call.name, str) and isinstance(call.arguments, dict)
            json.dumps(call.to_dict(), ensure_ascii=False).encode("utf-8")  # a tokenizer can take it


def test_format_then_parse_round_trips():
    calls = [ToolCall("get_weather", {"city": "Zürich", "days": 2}), {"name": "calc", "arguments": {"a": [1, 2.5]}},
             {"translate": {"text": "hi \"there\"\n"}}]
    parsed = parse_completion("<think>ok</think>\n" + format_tool_calls(calls))
    assert parsed.error is None
    assert [c.to_dict() for c in parsed.calls] == [
        {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}},
        {"name": "calc", "arguments": {"a": [1, 2.5]}},
        {"name": "translate", "arguments": {"text": "hi \"there\"\n"}},
    ]
    with pytest.raises(ValueError, match=r"calls\[0\]"):
        format_tool_calls([{"name": "f"}])


def test_normalize_tools_converts_bfcl_types_and_unwraps_openai():
    tool = {
        "name": "book", "description": "Book it.",
        "parameters": {"type": "dict", "properties": {
            "prefs": {"type": "dict", "properties": {"price": {"type": "float"}}},
            "slots": {"type": "tuple", "items": {"type": "any"}},
            "type": {"type": "string", "enum": ["dict", "float"]},  # a parameter *named* type
        }, "required": ["prefs"]},
    }
    before = json.dumps(tool)
    out = normalize_tools([tool, {"type": "function", "function": WEATHER}])
    assert json.dumps(tool) == before  # input untouched
    params = out[0]["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["prefs"] == {"type": "object", "properties": {"price": {"type": "number"}}}
    assert params["properties"]["slots"] == {"type": "array", "items": {"type": "string"}}
    assert params["properties"]["type"] == {"type": "string", "enum": ["dict", "float"]}
    assert out[1]["name"] == "get_weather" and out[1]["parameters"]["properties"]["scale"] == {"type": "number"}


@pytest.mark.parametrize("tools, match", [
    ([{"description": "no name"}], r"tools\[0\]"),
    ([WEATHER, "get_weather"], r"tools\[1\]"),
    ([{"name": "f", "parameters": "x"}], r"tools\[0\]\['parameters'\]"),
    ({"name": "f"}, "must be a list"),
])
def test_normalize_tools_rejects_bad_schemas(tools, match):
    with pytest.raises(ValueError, match=match):
        normalize_tools(tools)


# ---------------------------------------------------------------------------- prompt rendering

# SmolLM2-135M-Instruct's own chat template: ChatML, and it ignores tools=.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=vocab, unk_token="<unk>")
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    return tokenizer


TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_render_prompt_falls_back_to_hermes_when_template_ignores_tools():
    tokenizer = chatml_tokenizer()
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    prompt = render_prompt(tokenizer, messages, [WEATHER])
    assert prompt.startswith("<|im_start|>system\nYou can call these tools:\n<tools>\n")
    assert '"name":"get_weather"' in prompt and '"type":"object"' in prompt and '"dict"' not in prompt
    assert '<tool_call>\n{"name": <tool-name>' in prompt  # the call format is spelled out
    assert prompt.endswith("<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n")
    assert "SmolLM" not in prompt  # our system message replaced the template's default one
    assert messages == [{"role": "user", "content": "Weather in Oslo?"}]  # not mutated


def test_hermes_fallback_merges_into_a_system_message_that_already_shows_the_format():
    tokenizer = chatml_tokenizer()
    example = 'Example:\n<tool_call>\n{"name": "multiply", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    messages = [{"role": "system", "content": example}, {"role": "user", "content": "hi"}]
    prompt = render_prompt(tokenizer, messages, [WEATHER], add_generation_prompt=False)
    assert prompt.count("<|im_start|>system") == 1
    assert "<tool-name>" not in prompt  # no second copy of the format
    assert prompt.index("</tools>") < prompt.index("Example:")
    assert not prompt.endswith("<|im_start|>assistant\n")


def test_render_prompt_uses_the_template_tools_support_when_present():
    tokenizer = chatml_tokenizer()
    tokenizer.chat_template = TOOLS_TEMPLATE
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Weather?"}], [WEATHER])
    assert prompt.startswith("<|im_start|>system\n# Tools\n")
    assert "You can call these tools" not in prompt
    listed = json.loads(prompt.split("\n")[2])
    assert listed["type"] == "function" and listed["function"]["parameters"]["type"] == "object"


def test_render_prompt_falls_back_when_the_template_fails_on_tools():
    tokenizer = chatml_tokenizer()
    tokenizer.chat_template = "{% if tools %}{{ raise_exception('no tools') }}{% endif %}" + tokenizer.chat_template
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Weather?"}], [WEATHER])
    assert "You can call these tools" in prompt


def test_render_prompt_without_tools_is_the_plain_template():
    tokenizer = chatml_tokenizer()
    messages = [{"role": "user", "content": "hello"}]
    assert render_prompt(tokenizer, messages, []) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    with pytest.raises(ValueError, match="messages"):
        render_prompt(tokenizer, "hello", [WEATHER])


def test_hermes_system_prompt_lists_every_tool_once():
    text = hermes_system_prompt([WEATHER, {"name": "calc", "parameters": {"type": "dict", "properties": {}}}])
    lines = text.split("\n")
    assert json.loads(lines[2])["name"] == "get_weather" and json.loads(lines[3])["name"] == "calc"


def test_hermes_fallback_renders_a_multi_turn_conversation():
    tokenizer = chatml_tokenizer()
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "<think>weather</think>",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        tool_result_message("12 C, rain"),
        {"role": "assistant", "content": "It is 12 C and raining."},
        {"role": "user", "content": "And Rome?"},
    ]
    prompt = render_prompt(tokenizer, messages, [WEATHER])
    assert ('<|im_start|>assistant\n<think>weather</think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
            '</tool_call><|im_end|>') in prompt
    assert "<|im_start|>tool\n<tool_response>\n12 C, rain\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>user\nAnd Rome?<|im_end|>\n<|im_start|>assistant\n")
    # what the model wrote parses back from the rendered history
    turn = prompt.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert parse_completion(turn).calls == [ToolCall("get_weather", {"city": "Oslo"})]
