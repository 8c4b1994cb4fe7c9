"""awpo.rollout: vLLM on CPU (sampling log-probs, seeds, weight sync), the HF fallback, and
multi-turn episodes whose tool outputs are masked out of the loss."""
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from awpo.data import Task
from awpo.rollout import Completion, make_engine
from awpo.rollout.multiturn import RolloutOptions, continuation_text, run_episodes
from awpo.toolcall import ToolCall, format_tool_calls, render_prompt

PROMPTS = ["<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nAdd 3 and 4.5 please<|im_end|>\n<|im_start|>assistant\n"]


def hf_logprobs(model, prompt_ids, token_ids, temperature=1.0):
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(token_ids)[:, None])[:, 0]


def perturb(model, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


# ----------------------------------------------------------------------------------------------
# vLLM
# ----------------------------------------------------------------------------------------------

def test_vllm_samples_with_logprobs_that_match_the_hf_model(tiny_vllm_engine, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tiny_vllm_engine.sync_weights(model)
    out = tiny_vllm_engine.generate(PROMPTS, n=3, temperature=0.8, max_tokens=11, seed=5)
    assert [len(group) for group in out] == [3, 3]
    for prompt, group in zip(PROMPTS, out):
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        for sample in group:
            assert isinstance(sample, Completion) and len(sample.token_ids) == len(sample.logprobs) > 0
            expected = hf_logprobs(model, prompt_ids, sample.token_ids, temperature=0.8)
            torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=2e-4, rtol=0)
            assert all(lp <= 0 for lp in sample.logprobs)


def test_vllm_samples_that_share_a_prompt_of_several_kv_blocks_match_the_hf_model(tiny_vllm_engine, tiny_model_dir):
    """n samples of a prompt longer than two KV blocks: they share the prompt's full blocks through the
    prefix cache and each computes the partial last block itself (the CPU engine's small blocks exist
    for this); every sample's log-probs are still the HF model's, from a cold cache and from a warm one."""
    from awpo.rollout.vllm_engine import CPU_KV_BLOCK_SIZE

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    perturb(model, 0.02, seed=4)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tiny_vllm_engine.sync_weights(model)   # also empties the prefix cache
    assert tiny_vllm_engine.kv_block_size == CPU_KV_BLOCK_SIZE
    prompts = [PROMPTS[0].replace("Paris?", "Paris? " + "Also check Rome, Oslo and Lima tomorrow. " * k)
               for k in (7, 9)]
    prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    assert all(len(ids) > 2 * CPU_KV_BLOCK_SIZE and len(ids) % CPU_KV_BLOCK_SIZE for ids in prompt_ids)
    for _cache in ("cold", "warm"):
        out = tiny_vllm_engine.generate(prompts, n=5, temperature=0.9, max_tokens=7, seed=11)
        for ids, group in zip(prompt_ids, out):
            assert len(group) == 5 and len({tuple(s.token_ids) for s in group}) > 1
            for sample in group:
                expected = hf_logprobs(model, ids, sample.token_ids, temperature=0.9)
                torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("size", [0, -32, 48, True, 32.0, "32"])
def test_vllm_engine_rejects_a_kv_block_size_the_cpu_kernels_cannot_take(tiny_model_dir, size):
    if torch.cuda.is_available():
        pytest.skip("the multiple-of-32 rule is vLLM's CPU attention's")
    with pytest.raises(ValueError, match=r"kv_block_size=.*multiple of 32"):
        make_engine("vllm", tiny_model_dir, kv_block_size=size)


def test_vllm_seeded_sampling_is_reproducible(tiny_vllm_engine, tiny_model_dir):
    tiny_vllm_engine.sync_weights(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    first = tiny_vllm_engine.generate(PROMPTS, n=4, temperature=1.0, max_tokens=9, seed=123)
    again = tiny_vllm_engine.generate(PROMPTS, n=4, temperature=1.0, max_tokens=9, seed=123)
    other = tiny_vllm_engine.generate(PROMPTS, n=4, temperature=1.0, max_tokens=9, seed=124)
    ids = lambda out: [[s.token_ids for s in group] for group in out]
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)
    greedy = tiny_vllm_engine.generate(PROMPTS[:1], n=2, temperature=0.0, max_tokens=6)
    assert greedy[0][0].token_ids == greedy[0][1].token_ids


def test_vllm_weight_sync_copies_the_new_weights(tiny_vllm_engine, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    original = copy.deepcopy(model)
    prompt_ids = tokenizer(PROMPTS[0], add_special_tokens=False).input_ids
    perturb(model, 0.05, seed=1)
    tiny_vllm_engine.sync_weights(model)
    synced = copy.deepcopy(model)
    sample = tiny_vllm_engine.generate(PROMPTS[:1], n=1, temperature=1.0, max_tokens=13, seed=9)[0][0]
    vllm_logprobs = torch.tensor(sample.logprobs)
    torch.testing.assert_close(vllm_logprobs, hf_logprobs(model, prompt_ids, sample.token_ids), atol=2e-4, rtol=0)
    assert (vllm_logprobs - hf_logprobs(original, prompt_ids, sample.token_ids)).abs().max() > 1e-2

    # vLLM holds a copy: changing the trainer's weights without a sync changes nothing there
    perturb(model, 0.05, seed=2)
    again = tiny_vllm_engine.generate(PROMPTS[:1], n=1, temperature=1.0, max_tokens=13, seed=9)[0][0]
    assert again.token_ids == sample.token_ids
    torch.testing.assert_close(torch.tensor(again.logprobs), hf_logprobs(synced, prompt_ids, again.token_ids),
                               atol=2e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# HF fallback
# ----------------------------------------------------------------------------------------------

def test_vllm_engine_keeps_working_after_another_in_process_engine_shuts_down(tiny_vllm_engine, tiny_model_dir):
    """vLLM's shutdown of any in-process engine (a judge's, a test's) tears down the parallel groups
    that every engine shares; the engine rebuilds them instead of failing its next step."""
    import gc

    from vllm.distributed import parallel_state

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tiny_vllm_engine.sync_weights(policy)
    before = tiny_vllm_engine.generate(["Weather in Oslo?"], n=2, temperature=1.0, max_tokens=6, seed=3)
    other = make_engine("vllm", tiny_model_dir, seed=1, dtype="float32", max_model_len=512, kv_cache_gb=0.125)
    assert other.generate(["hi"], n=1, temperature=0.0, max_tokens=2)[0][0].token_ids
    other.llm.llm_engine.engine_core.shutdown()
    del other
    gc.collect()
    assert not parallel_state.model_parallel_is_initialized()  # what vLLM's shutdown does to everyone
    tiny_vllm_engine.sync_weights(policy)
    after = tiny_vllm_engine.generate(["Weather in Oslo?"], n=2, temperature=1.0, max_tokens=6, seed=3)
    assert [[c.token_ids for c in group] for group in after] == [[c.token_ids for c in group] for group in before]
    assert parallel_state.model_parallel_is_initialized()


def test_hf_engine_samples_with_matching_logprobs(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = make_engine("hf", tiny_model_dir, model=model, tokenizer=tokenizer, seed=0)
    out = engine.generate(PROMPTS, n=2, temperature=0.9, max_tokens=7, seed=3)
    assert engine.generate(PROMPTS, n=2, temperature=0.9, max_tokens=7, seed=3)[1][1].token_ids == out[1][1].token_ids
    for prompt, group in zip(PROMPTS, out):
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        for sample in group:
            assert 0 < len(sample.token_ids) <= 7 and sample.finish_reason in ("stop", "length")
            expected = hf_logprobs(model, prompt_ids, sample.token_ids, temperature=0.9)
            torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=1e-4, rtol=0)


def test_unknown_engine_kind_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="rollout engine kind"):
        make_engine("sglang", tiny_model_dir)


# ----------------------------------------------------------------------------------------------
# multi-turn episodes (a scripted engine and a scripted environment: the tiny random model never
# writes a tool call, and the assertions are about the token bookkeeping)
# ----------------------------------------------------------------------------------------------

class ScriptedEngine:
    """Replies with fixed assistant texts, tokenised, ending with the eos token, with fake log-probs."""

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.calls = tokenizer, list(replies), []

    def generate(self, prompts, *, n, temperature, max_tokens, top_p=1.0, stop=None, seed=None):
        self.calls.append([list(p) for p in prompts])
        out = []
        for _ in prompts:
            group = []
            for _ in range(n):
                text = self.replies.pop(0)
                ids = self.tokenizer(text, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
                finish = "stop"
                if len(ids) > max_tokens:
                    ids, finish = ids[:max_tokens], "length"
                group.append(Completion(text, ids, [-0.5 - 0.01 * i for i in range(len(ids))], finish))
            out.append(group)
        return out

    def sync_weights(self, model):
        pass


class ScriptedCounterEnv:
    """A counter with one tool, `add(x)`; its results are the text the model must not be trained on."""

    def __init__(self, state):
        self.value = (state or {}).get("value", 0)

    def execute(self, call: ToolCall) -> str:
        self.value += call.arguments["x"]
        return f"RESULT value={self.value}"

    def tools(self):
        return [ADD_TOOL]

    def state(self):
        return {"value": self.value}


ADD_TOOL = {"name": "add", "description": "Add x to the counter.",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}


def counter_task(user_turns=("Now add 5.",)):
    return Task(id="count-1", category="multi_turn",
                messages=[{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "Add 2."}],
                tools=[ADD_TOOL], ground_truth=[], env="counter", env_state={"value": 1},
                user_turns=list(user_turns))


def call_text(x):
    return format_tool_calls([ToolCall("add", {"x": x})])


def test_multi_turn_episode_masks_tool_outputs_scripted(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    replies = [call_text(2), "Done, it is 3.", call_text(5), "Now it is 8."]
    engine = ScriptedEngine(tokenizer, replies)
    options = RolloutOptions(num_generations=1, temperature=1.0, max_completion_length=400, max_tool_rounds=3)
    [episode] = run_episodes(engine, tokenizer, [counter_task()], options,
                             make_env=lambda name, state: ScriptedCounterEnv(state))

    assert episode.done and not episode.truncated
    assert episode.env.value == 8 and episode.num_tool_calls == 2 and len(episode.turns) == 4
    assert len(episode.response_ids) == len(episode.loss_mask) == len(episode.sampling_logprobs)
    assert len(engine.calls) == 4   # one engine call per round

    # the sampled tokens (mask 1) are exactly the four replies, each with its eos token
    sampled = [t for t, m in zip(episode.response_ids, episode.loss_mask) if m]
    expected = []
    for text in replies:
        expected += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert sampled == expected
    # the world's tokens (mask 0) hold the tool results and the second user turn, never trained on
    world = tokenizer.decode([t for t, m in zip(episode.response_ids, episode.loss_mask) if not m])
    assert "RESULT value=3" in world and "RESULT value=8" in world and "Now add 5." in world
    assert "RESULT" not in tokenizer.decode(sampled)
    assert all(lp == 0.0 for lp, m in zip(episode.sampling_logprobs, episode.loss_mask) if not m)
    assert all(lp < 0.0 for lp, m in zip(episode.sampling_logprobs, episode.loss_mask) if m)

    # the token sequence is exactly the chat template's rendering of the whole conversation
    full = tokenizer.decode(episode.prompt_ids + episode.response_ids)
    rendered = render_prompt(tokenizer, episode.messages, episode.task.tools, add_generation_prompt=False)
    assert full + "\n" == rendered
    # and every later engine call saw the previous context as its prefix
    assert engine.calls[1][0] == episode.prompt_ids + episode.response_ids[:len(engine.calls[1][0]) - len(episode.prompt_ids)]


def test_multi_turn_tool_round_limit_and_length_limit_scripted(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # the model keeps calling: after max_tool_rounds rounds the episode moves on / ends
    engine = ScriptedEngine(tokenizer, [call_text(1)] * 3)
    options = RolloutOptions(num_generations=1, temperature=1.0, max_completion_length=400, max_tool_rounds=2)
    [episode] = run_episodes(engine, tokenizer, [counter_task(user_turns=())], options,
                             make_env=lambda name, state: ScriptedCounterEnv(state))
    assert episode.num_tool_calls == 2 and len(episode.turns) == 3 and episode.done and not episode.truncated

    # a tight token budget truncates the episode
    engine = ScriptedEngine(tokenizer, [call_text(1), call_text(1)])
    options = RolloutOptions(num_generations=1, temperature=1.0, max_completion_length=40, max_tool_rounds=4)
    [episode] = run_episodes(engine, tokenizer, [counter_task(user_turns=())], options,
                             make_env=lambda name, state: ScriptedCounterEnv(state))
    assert episode.truncated and len(episode.response_ids) <= 40


def test_single_turn_groups_are_contiguous_scripted(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tasks = [Task(id=f"t{i}", category="simple", messages=[{"role": "user", "content": f"Add {i}."}],
                  tools=[ADD_TOOL], ground_truth=[{"add": {"x": [i]}}]) for i in range(3)]
    replies = [call_text(i) for i in range(3) for _ in range(2)]
    episodes = run_episodes(ScriptedEngine(tokenizer, replies), tokenizer, tasks,
                            RolloutOptions(num_generations=2, temperature=1.0, max_completion_length=64))
    assert [e.group for e in episodes] == [0, 0, 1, 1, 2, 2]
    assert [e.task.id for e in episodes] == ["t0", "t0", "t1", "t1", "t2", "t2"]
    assert all(e.loss_mask == [1] * len(e.response_ids) for e in episodes)
    assert [e.calls[0].arguments["x"] for e in episodes] == [0, 0, 1, 1, 2, 2]


def test_continuation_text_follows_the_chat_template(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    history = [{"role": "user", "content": "hi"}]
    reply = [{"role": "tool", "content": "42"}]
    text = continuation_text(tokenizer, [], history, "ok", reply, ended_with_eos=True)
    assert text == "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    text = continuation_text(tokenizer, [], history, "ok", reply, ended_with_eos=False)
    assert text.startswith("<|im_end|>\n<|im_start|>tool")


# ----------------------------------------------------------------------------------------------
# scoring real multi-turn episodes: the built-in file-system environment and the real scorer
# ----------------------------------------------------------------------------------------------

def _builtin_multi_turn_task(index=0):
    from awpo.data import builtin_tasks

    return builtin_tasks("train", n=index + 1, seed=0, categories=["multi_turn"])[index]


def _solve(task):
    """Assistant turns that do each user turn with its ground-truth calls, then say it is done."""
    return [text for turn in task.ground_truth
            for text in ("<think>on it</think>\n" + format_tool_calls([ToolCall(c["name"], c["arguments"]) for c in turn]),
                         "Done.")]


def _score(task, replies, tiny_model_dir):
    from awpo.scoring import score_episodes

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    options = RolloutOptions(num_generations=1, temperature=1.0, max_completion_length=4000, max_tool_rounds=3)
    engine = ScriptedEngine(tokenizer, replies)
    [episode] = run_episodes(engine, tokenizer, [task], options)   # the default make_env: awpo.envs
    assert engine.replies == [] and episode.done and not episode.truncated
    graded, exact = score_episodes([episode], graded=True), score_episodes([episode], graded=False)
    return episode, exact.exact[0], graded.outcome[0]


def test_multi_turn_episode_with_a_malformed_call_scores_zero(tiny_model_dir):
    task = _builtin_multi_turn_task()
    episode, exact, graded = _score(task, _solve(task), tiny_model_dir)
    assert (exact, graded) == (1.0, 1.0)
    # the same episode ending with a broken call: the environment is in the right state, but the
    # output is malformed, so it scores 0 (exact and graded), as a single-turn completion would
    broken = '<tool_call>\n{"name":'
    episode, exact, graded = _score(task, _solve(task)[:-1] + [broken], tiny_model_dir)   # instead of "Done."
    assert episode.turns[-1] == broken and episode.parsed_turns[-1].error is not None
    from awpo.envs import replay_ground_truth
    assert episode.env.outcome_state() == replay_ground_truth(task).outcome_state()
    assert (exact, graded) == (0.0, 0.0)
    # a broken call in an earlier turn also counts
    replies = _solve(task)
    replies[1] = "Done with that. " + broken   # ends the first user turn, not the episode
    episode, exact, graded = _score(task, replies, tiny_model_dir)
    assert episode.parsed_turns[1].error is not None and len(episode.turns) == len(replies)
    assert episode.env.outcome_state() == replay_ground_truth(task).outcome_state()
    assert (exact, graded) == (0.0, 0.0)


def test_multi_turn_episode_that_does_nothing_scores_zero(tiny_model_dir):
    from awpo.data import builtin_tasks

    # builtin-train-00021 (write summary.txt, then remove it) used to pass with no call at all
    tasks = builtin_tasks("train", n=120, seed=0, categories=["multi_turn"])
    for task in tasks[:40:4] + [tasks[21]]:
        episode, exact, graded = _score(task, ["Sorry, I cannot do that."] * len(task.ground_truth), tiny_model_dir)
        assert episode.num_tool_calls == 0
        assert (exact, graded) == (0.0, 0.0), task.id
