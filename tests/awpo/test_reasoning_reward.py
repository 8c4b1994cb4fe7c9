"""awpo.rewards.reasoning: the deterministic RuleJudge, score parsing, and LLMJudge driven by a
scripted generate function (no model here: the judge's own logic is what is under test)."""

import math
from types import SimpleNamespace

import pytest

from awpo.rewards import LLMJudge, RuleJudge, parse_judge_score
from awpo.rewards.reasoning import JudgeRequest, judge_many
from awpo.toolcall import ToolCall, format_tool_calls, parse_completion

TOOLS = [
    {"name": "get_weather", "description": "Weather in a city.",
     "parameters": {"type": "dict", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}},
    {"name": "convert_currency", "description": "Convert money.",
     "parameters": {"type": "dict", "properties": {"amount": {"type": "float"}}, "required": ["amount"]}},
]
CALL = [ToolCall("get_weather", {"city": "Lisbon", "days": 12})]
PROMPT = "What's the weather in Lisbon for the next 12 days?"


def test_rule_judge_rewards_grounded_reasoning():
    judge = RuleJudge()
    good = "The user wants the Lisbon forecast for 12 days, so get_weather with city Lisbon and days 12."
    assert judge.score(PROMPT, good, CALL, TOOLS) == pytest.approx(1.0)
    no_tool_name = "The user wants the Lisbon forecast for 12 days, so I look it up for them now."
    no_values = "The user wants a forecast, so I call get weather with the right arguments now."
    vague = "I will answer the question about this thing now okay."
    scores = [judge.score(PROMPT, text, CALL, TOOLS) for text in (no_tool_name, no_values, vague)]
    assert scores[0] == pytest.approx(1 - 0.35)  # tool part 0, arguments 2/2
    assert scores[1] == pytest.approx(1 - 0.35)  # tool part 1 ("get weather"), arguments 0/2
    assert scores[2] == pytest.approx(1 - 0.35 - 0.35)


def test_rule_judge_numbers_match_numerically():
    parts = RuleJudge().parts("Convert 100.0 dollars, so convert_currency with amount 100.", [ToolCall("convert_currency", {"amount": 100})], TOOLS)
    assert parts["tool"] == 1.0 and parts["arguments"] == 1.0


def test_rule_judge_penalises_invented_tools():
    invented = [ToolCall("get_stock_price", {"symbol": "AAPL"})]
    parts = RuleJudge().parts("The user wants AAPL, so get_stock_price with symbol AAPL.", invented, TOOLS)
    assert parts["tool"] == 0.0 and parts["arguments"] == 1.0


def test_rule_judge_on_irrelevance_wants_a_no_tool_fits_statement():
    judge = RuleJudge()
    says_none = "The user wants a poem. None of the available tools can write poems, so no call."
    silent = "The user wants a poem about the sea and waves, I will write a poem."
    assert judge.score("Write a poem", says_none, [], TOOLS) == pytest.approx(1.0)
    assert judge.score("Write a poem", silent, [], TOOLS) == pytest.approx(0.3 / 0.65)  # tool part 0, no arguments part


def test_rule_judge_penalises_loops_and_bad_lengths():
    judge = RuleJudge(min_words=5, max_words=40)
    loop = "get_weather Lisbon 12 " + "I should call the tool now. " * 20
    parts = judge.parts(loop, CALL, TOOLS)
    assert parts["repetition"] == 0.0
    assert parts["length"] == pytest.approx(40 / len(loop.split()))
    short = judge.parts("get_weather Lisbon", CALL, TOOLS)
    assert short["length"] == pytest.approx(2 / 5) and short["repetition"] == 1.0


def test_rule_judge_missing_and_empty_reasoning():
    # SPEC section 1: no reasoning where the prompt asks for it is the worst score, not "no score"
    assert RuleJudge().score(PROMPT, None, CALL, TOOLS) == 0.0
    assert RuleJudge().score(PROMPT, "   ", CALL, TOOLS) == 0.0  # an empty <think> block is no reasoning
    assert RuleJudge(missing_reasoning_score=0.25).score(PROMPT, "", CALL, TOOLS) == 0.25
    assert math.isnan(RuleJudge(missing_reasoning_score=None).score(PROMPT, None, CALL, TOOLS))
    for bad in (-0.1, 1.5, float("nan"), "0", True):
        with pytest.raises(ValueError, match="missing_reasoning_score"):
            RuleJudge(missing_reasoning_score=bad)
        with pytest.raises(ValueError, match="missing_reasoning_score"):
            LLMJudge(ScriptedGenerate(["Score: 1/10"]), missing_reasoning_score=bad)


def test_both_judges_give_the_missing_score_for_an_empty_think_block_without_asking_the_model():
    parsed = parse_completion("<think></think>\n" + format_tool_calls(CALL))
    assert parsed.reasoning == "" and parsed.calls == CALL
    generate = ScriptedGenerate(["Score: 9/10"])
    rule = RuleJudge().score(PROMPT, parsed.reasoning, parsed.calls, TOOLS)
    llm = LLMJudge(generate).score(PROMPT, parsed.reasoning, parsed.calls, TOOLS)
    assert rule == 0.0 and llm == 0.0 and generate.calls == []
    assert math.isnan(LLMJudge(generate, missing_reasoning_score=None).score(PROMPT, "", CALL, TOOLS))


def test_dropping_reasoning_no_longer_escapes_the_reasoning_reward():
    """The escape that made one AWPO run exactly GRPO: think-less completions in a group of thinking
    ones must get a negative reasoning advantage, below every completion that reasons."""
    import torch

    from awpo_kernels import group_advantages

    judge = RuleJudge()
    good = "The user wants the Lisbon forecast for 12 days, so get_weather with city Lisbon and days 12."
    weak = "I will answer the question about this thing now okay."
    reasonings = [good, weak, None, ""]
    scores = torch.tensor([judge.score(PROMPT, r, CALL, TOOLS) for r in reasonings], dtype=torch.float64)
    assert not torch.isnan(scores).any()
    outcome = torch.zeros(4, dtype=torch.float64)  # all fail: only the reasoning term speaks
    adv = group_advantages(outcome, scores, group_size=4, estimator="awpo", backend="reference").advantages
    assert adv[2] < 0 and adv[3] < 0 and adv[2] == adv[3]
    assert adv[1] > adv[2] and adv[0] > adv[1]


def test_rule_judge_survives_a_value_too_large_for_a_float():
    # the parser rejects such literals, but a caller can hand over calls directly: no OverflowError
    calls = [ToolCall("convert_currency", {"amount": 10 ** 400})]
    parts = RuleJudge().parts("convert_currency with amount " + "9" * 400, calls, TOOLS)
    assert parts["tool"] == 1.0 and parts["arguments"] == 0.0
    assert 0.0 <= RuleJudge().score(PROMPT, "convert_currency amount 1e400", calls, TOOLS) <= 1.0


def test_rule_judge_is_deterministic_and_bounded():
    judge = RuleJudge()
    texts = ["a b c d e f g h i j", "get_weather " * 50, "Lisbon 12 get_weather days city", "x"]
    for text in texts:
        first = judge.score(PROMPT, text, CALL, TOOLS)
        assert 0.0 <= first <= 1.0 and first == judge.score(PROMPT, text, CALL, TOOLS)


@pytest.mark.parametrize("reply, expected", [
    ("The reasoning is fine.\nScore: 7/10", 0.7),
    ("Score: 7 / 10", 0.7),
    ("**Score:** 6/10", 0.6),
    ("The score is 4.", 0.4),
    ("score = 3 out of 4", 0.75),
    ("Rating: 80%", 0.8),
    ('{"score": 8, "why": "ok"}', 0.8),
    ('blah {"score": "6"} blah', 0.6),
    ('{"score": 4.5}', 0.45),
    ("9", 0.9),
    ("  10.  ", 1.0),
    # a plain number is on the rubric's 0..10 scale whatever its notation ("Score: N/10" is asked)
    ("0.85", 0.085),
    ('{"score": 0.45}', 0.045),
    ("Score: 1", 0.1),
    ("Score: 1.0", 0.1),
    ("Score: 1e0", 0.1),
    ("Score: 5/1e1", 0.5),
    ("Score: 7.5/10.", 0.75),
    ("7/10\nScore: 1e3", math.nan),  # the last verdict is out of range: no score, not an older 7/10
    ("Score: 1e999", math.nan),
    ("I'd say 6/10 overall.", 0.6),
    ("Score: 4/10 at first, but on reflection Score: 9/10", 0.9),
    ("Score: 11/10", math.nan),
    ("Score: -2", math.nan),
    ("Score: 5/0", math.nan),
    ("This reasoning looks good to me.", math.nan),
    ("", math.nan),
    (None, math.nan),
    ('{"score": true}', math.nan),
])
def test_parse_judge_score(reply, expected):
    value = parse_judge_score(reply)
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected)


class ScriptedGenerate:
    """A generate function that answers from a script and records what it was asked."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return [self.replies.pop(0) for _ in prompts]


def test_llm_judge_with_scripted_generate_builds_rubric_and_parses():
    generate = ScriptedGenerate(["Grounded and concise.\nScore: 8/10"])
    judge = LLMJudge(generate)
    score = judge.score(PROMPT, "Need get_weather for Lisbon, 12 days.", CALL, TOOLS)
    assert score == pytest.approx(0.8)
    (prompt,), = generate.calls
    assert PROMPT in prompt and "Need get_weather for Lisbon, 12 days." in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Lisbon", "days": 12}}' in prompt
    assert "- get_weather(city, days): Weather in a city. Required: city." in prompt
    assert "Score: N/10" in prompt


def test_llm_judge_scripted_cache_per_step():
    generate = ScriptedGenerate(["Score: 6/10", "Score: 9/10", "Score: 2/10"])
    judge = LLMJudge(generate)
    assert judge.score(PROMPT, "r1", CALL, TOOLS) == pytest.approx(0.6)
    assert judge.score(PROMPT, "r1", CALL, TOOLS) == pytest.approx(0.6)  # cached: no new generation
    assert len(generate.calls) == 1
    assert judge.score(PROMPT, "r1", [], TOOLS) == pytest.approx(0.9)  # other calls: other completion
    judge.new_step()
    assert judge.score(PROMPT, "r1", CALL, TOOLS) == pytest.approx(0.2)
    assert len(generate.calls) == 3


def test_llm_judge_scripted_batch_generates_each_unique_completion_once():
    generate = ScriptedGenerate(["Score: 1/10", "Score: 5/10"])
    judge = LLMJudge(generate)
    requests = [JudgeRequest(PROMPT, "a", CALL, TOOLS), JudgeRequest(PROMPT, "b", CALL, TOOLS),
                JudgeRequest(PROMPT, "a", CALL, TOOLS), JudgeRequest(PROMPT, None, CALL, TOOLS)]
    scores = judge_many(judge, requests)
    assert scores == pytest.approx([0.1, 0.5, 0.1, 0.0])  # no reasoning: the missing score, not generated
    assert [len(batch) for batch in generate.calls] == [2]


def test_llm_judge_scripted_failures_give_nan_and_are_retried():
    generate = ScriptedGenerate(["I refuse to grade.", "Score: 7/10"])
    judge = LLMJudge(generate)
    assert math.isnan(judge.score(PROMPT, "r", CALL, TOOLS))
    assert judge.score(PROMPT, "r", CALL, TOOLS) == pytest.approx(0.7)  # NaN was not cached

    def broken(prompts):
        raise RuntimeError("engine died")

    assert math.isnan(LLMJudge(broken).score(PROMPT, "r", CALL, TOOLS))
    assert math.isnan(LLMJudge(lambda prompts: ["Score: 5/10"] * 3).score(PROMPT, "r", CALL, TOOLS))  # wrong count
    assert math.isnan(LLMJudge(lambda prompts: None).score(PROMPT, "r", CALL, TOOLS))
    with pytest.raises(ValueError, match="generate"):
        LLMJudge("not callable")


def test_llm_judge_scripted_engine_through_from_engine():
    class ScriptedEngine:
        def __init__(self):
            self.seen = []

        def generate(self, prompts, *, n, temperature, max_tokens, top_p=1.0, stop=None):
            self.seen.append((prompts, n, temperature, max_tokens))
            return [[SimpleNamespace(text="Score: 3/10", token_ids=[], logprobs=None)] for _ in prompts]

    class ChatTemplate:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<user>{messages[0]['content']}</user><assistant>"

    engine = ScriptedEngine()
    judge = LLMJudge.from_engine(engine, tokenizer=ChatTemplate(), max_tokens=32)
    assert judge.score(PROMPT, "some reasoning", CALL, TOOLS) == pytest.approx(0.3)
    (prompts, n, temperature, max_tokens), = engine.seen
    assert n == 1 and temperature == 0.0 and max_tokens == 32
    assert prompts[0].startswith("<user>You grade the reasoning") and prompts[0].endswith("<assistant>")


def test_judge_many_falls_back_to_score():
    class OnlyScore:
        def score(self, prompt, reasoning, calls, tools):
            return len(reasoning) / 10

    assert judge_many(OnlyScore(), [JudgeRequest("p", "abc", [], []), JudgeRequest("p", "a", [], [])]) == [0.3, 0.1]
