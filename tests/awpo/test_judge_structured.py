"""Structured verdicts in the engine judge, without starting vLLM (test_judge_engine.py runs the real
engines): which backends ask for ``VERDICT_SCHEMA``, with which token budget, and why that budget is
enough (the longest verdict llguidance lets through, the backend vLLM is started with)."""
from __future__ import annotations

import json

import pytest
from tiny_model import build_tiny_model, build_tiny_tokenizer

from awpo.judges.engine import VERDICT_MAX_TOKENS, EngineBackend
from awpo.judges.verdict import MAX_REASON_CHARS, VERDICT_SCHEMA, parse_judge_score
from awpo.rollout import Completion

# the longest verdict the schema allows, character for character the longest in bytes: every reason
# character a 6-byte escape (llguidance writes control characters so; raw characters take 1 to 4 bytes)
LONGEST_VERDICT = '{"reason":"' + "\\u001f" * MAX_REASON_CHARS + '","score":10}'


class SchemaEngine:
    """A rollout engine double that can constrain (``supports_json_schema``) and records each call."""

    supports_json_schema = True

    def __init__(self, reply: str = '{"reason":"ok","score":7}'):
        self.reply, self.calls = reply, []

    def generate(self, prompts, **kwargs):
        self.calls.append(kwargs)
        return [[Completion(self.reply, [1], None, "stop")] for _ in prompts]


class PlainEngine:
    """A double of an engine from before structured outputs: no attribute, no ``json_schema`` keyword."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, *, n, temperature, max_tokens):
        self.calls.append(dict(n=n, temperature=temperature, max_tokens=max_tokens))
        return [[Completion("Fine.\nScore: 6/10", [1], None, "stop")] for _ in prompts]


class WordCounter:
    """Counts whitespace-separated words as tokens (for the context check)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_a_backend_on_an_engine_that_can_constrain_asks_for_the_verdict_schema_with_room_for_it():
    engine = SchemaEngine()
    backend = EngineBackend(engine)
    assert backend.structured and backend.max_tokens == 96 and backend.reply_tokens == VERDICT_MAX_TOKENS
    assert backend(["grade this", "and this"]) == ['{"reason":"ok","score":7}'] * 2
    assert engine.calls == [dict(n=1, temperature=0.0, max_tokens=VERDICT_MAX_TOKENS, json_schema=VERDICT_SCHEMA)]
    assert EngineBackend(engine, max_tokens=4000).reply_tokens == 4000  # a larger budget is kept

    free = EngineBackend(engine, structured_output=False)
    assert not free.structured and free.reply_tokens == 96
    free(["grade this"])
    assert engine.calls[-1] == dict(n=1, temperature=0.0, max_tokens=96)  # free text: no schema asked


def test_an_engine_that_cannot_constrain_gets_free_text_requests():
    engine = PlainEngine()
    backend = EngineBackend(engine, structured_output=True)
    assert not backend.structured and backend.reply_tokens == 96
    assert backend(["grade this"]) == ["Fine.\nScore: 6/10"]
    assert engine.calls == [dict(n=1, temperature=0.0, max_tokens=96)]

    class Unsure(SchemaEngine):
        supports_json_schema = "yes"  # only True itself counts: a mock's truthy attribute is no promise

    assert not EngineBackend(Unsure()).structured


def test_the_context_check_reserves_max_tokens_not_the_structured_reply_budget():
    engine = SchemaEngine()
    engine.tokenizer = WordCounter()  # no tokenizer given: the backend counts with the engine's, bare text
    backend = EngineBackend(engine, max_tokens=50, max_model_len=200)
    replies = backend(["word " * 150, "word " * 151])  # 150 + 50 fits, 151 + 50 does not
    assert replies[0] is not None and replies[1] is None
    assert engine.calls[0]["max_tokens"] == VERDICT_MAX_TOKENS  # the reply may still run to the context's end
    assert "1 rubric prompt(s) longer than the judge's context (200 tokens less 50" in backend.last_error


@pytest.mark.parametrize("max_tokens", [0, -1, 1.5, True, "96"])
def test_max_tokens_must_be_a_positive_integer(max_tokens):
    with pytest.raises(ValueError, match="max_tokens"):
        EngineBackend(SchemaEngine(), max_tokens=max_tokens)


def test_the_structured_budget_holds_the_longest_verdict_the_schema_allows():
    verdict = json.loads(LONGEST_VERDICT)
    assert len(verdict["reason"]) == MAX_REASON_CHARS and parse_judge_score(LONGEST_VERDICT) == 1.0
    # a token carries at least one byte: the longest verdict is at most this many tokens in any tokenizer
    assert len(LONGEST_VERDICT.encode()) == VERDICT_MAX_TOKENS
    assert VERDICT_MAX_TOKENS > 96  # the default budget alone would cut long reasons: hence the raise


def test_llguidance_as_the_vllm_engine_starts_it_lets_nothing_longer_or_looser_through():
    """The engine's grammar backend (llguidance, compact JSON: ``STRUCTURED_OUTPUTS_CONFIG``) accepts
    the longest verdict, and no longer reason, no whitespace padding, no raw control character (which
    strict JSON, and so the verdict parser, rejects)."""
    pytest.importorskip("llguidance")
    import llguidance
    import llguidance.hf

    from awpo.rollout.vllm_engine import STRUCTURED_OUTPUTS_CONFIG

    assert STRUCTURED_OUTPUTS_CONFIG == {"backend": "guidance", "disable_any_whitespace": True}
    tokenizer = build_tiny_tokenizer()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(VERDICT_SCHEMA),
                                                            defaults={"whitespace_flexible": False})
    lltokenizer = llguidance.hf.from_tokenizer(tokenizer)

    def accepted(text: str) -> bool:
        matcher = llguidance.LLMatcher(lltokenizer, grammar, log_level=0)
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        return matcher.consume_tokens(tokens) and matcher.is_accepting()

    assert accepted(LONGEST_VERDICT) and accepted('{"reason":"","score":0}')
    too_long = '{"reason":"' + "a" * (MAX_REASON_CHARS + 1) + '","score":10}'
    for text in [too_long, '{"reason": "a", "score": 5}', '{"reason":"a\tb","score":5}',
                 '{"reason":"a","score":11}', '{"reason":"a","score":5,"extra":1}']:
        assert not accepted(text), text


def test_the_hf_engine_cannot_constrain_and_says_so(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from awpo.rollout import make_engine

    path = build_tiny_model(str(tmp_path / "judge"), seed=1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    engine = make_engine("hf", path, model=model, tokenizer=tokenizer)
    assert engine.supports_json_schema is False
    with pytest.raises(ValueError, match="json_schema"):
        engine.generate(["Grade this."], n=1, temperature=0.0, max_tokens=4, json_schema=VERDICT_SCHEMA)
    backend = EngineBackend(engine, tokenizer, max_tokens=4)
    assert not backend.structured and backend.reply_tokens == 4
    (reply,) = backend(["Grade this."])  # asked for free text, which the engine gives
    assert isinstance(reply, str)
