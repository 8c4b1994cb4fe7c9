"""Episodes: G rollouts per task, single-turn or multi-turn with tools executed in an environment.

One episode is one token sequence `prompt_ids + response_ids`. The response holds every token after
the prompt: what the policy sampled (`loss_mask` 1, with its sampling log-prob) and what the world
added (tool results, later user turns, the chat template's glue between turns: `loss_mask` 0, so
the loss never trains the model to predict tool outputs).

A multi-turn episode runs: generate -> parse the calls -> execute them in the task's environment ->
append the results as `tool` messages -> generate again, until the model answers without a call
(then the next scripted user turn, if any) or a limit is hit (`max_tool_rounds` per user turn, or
`max_completion_length` response tokens in all). All live episodes advance together, one engine
call per round.

Sampled tokens are never re-tokenised: the model is trained on exactly the ids it sampled. Only
the text between turns is rendered with the chat template (the difference between the
conversation rendered with and without the new messages) and tokenised.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..toolcall import ParsedCompletion, ToolCall, parse_completion, render_prompt
from . import Completion, RolloutEngine

logger = logging.getLogger(__name__)


@dataclass
class Episode:
    task: object                      # awpo.data.Task
    group: int                        # index of the task in the batch (episodes are group-contiguous)
    prompt_ids: list[int]
    messages: list[dict]              # the conversation so far (the prompt's messages included)
    env: object | None = None         # awpo.envs.ToolEnv for multi-turn tasks
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)          # the text of each assistant turn
    parsed_turns: list[ParsedCompletion] = field(default_factory=list)
    num_tool_calls: int = 0
    truncated: bool = False           # stopped by a length limit, not by the model
    done: bool = False
    _user_turns_left: list[str] = field(default_factory=list)
    _rounds_this_turn: int = 0

    @property
    def completion_text(self) -> str:
        """The assistant's text: the single turn, or all turns joined (multi-turn)."""
        return "\n".join(self.turns)

    @property
    def calls(self) -> list[ToolCall]:
        return [call for parsed in self.parsed_turns for call in parsed.calls]

    @property
    def reasoning(self) -> str | None:
        parts = [p.reasoning for p in self.parsed_turns if p.reasoning is not None]
        return "\n".join(parts) if parts else None

    @property
    def num_sampled_tokens(self) -> int:
        return sum(self.loss_mask)


@dataclass
class RolloutOptions:
    num_generations: int
    temperature: float
    max_completion_length: int
    top_p: float = 1.0
    max_tool_rounds: int = 4          # tool-call rounds per user turn in a multi-turn episode
    seed: int | None = None


def run_episodes(engine: RolloutEngine, tokenizer, tasks: Sequence, options: RolloutOptions,
                 make_env=None) -> list[Episode]:
    """`len(tasks) * num_generations` finished episodes, group-contiguous (task 0's G, task 1's G, ...).

    `make_env(name, state)` builds a task's environment (default: `awpo.envs.make_env`).
    """
    if make_env is None and any(getattr(t, "env", None) for t in tasks):
        from ..envs import make_env
    prompts = [render_prompt(tokenizer, list(t.messages), t.tools) for t in tasks]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    first = engine.generate(prompt_ids, n=options.num_generations, temperature=options.temperature,
                            max_tokens=options.max_completion_length, top_p=options.top_p, seed=options.seed)
    episodes = []
    for group, (task, ids, samples) in enumerate(zip(tasks, prompt_ids, first)):
        for completion in samples:
            episode = _new_episode(task, group, ids, make_env)
            _take_turn(episode, completion, tokenizer, options)
            episodes.append(episode)

    round_index = 0
    while live := [e for e in episodes if not e.done]:
        round_index += 1
        contexts = [e.prompt_ids + e.response_ids for e in live]
        # one max_tokens per call: the largest budget; _take_turn cuts each episode to its own
        budget = max(options.max_completion_length - len(e.response_ids) for e in live)
        seed = None if options.seed is None else options.seed + 7919 * round_index
        outputs = engine.generate(contexts, n=1, temperature=options.temperature, max_tokens=budget,
                                  top_p=options.top_p, seed=seed)
        for episode, samples in zip(live, outputs):
            _take_turn(episode, samples[0], tokenizer, options)
    return episodes


def _new_episode(task, group: int, prompt_ids: list[int], make_env) -> Episode:
    env = None
    if getattr(task, "env", None):
        env = make_env(task.env, copy.deepcopy(task.env_state))
    return Episode(task=task, group=group, prompt_ids=list(prompt_ids), messages=list(task.messages), env=env,
                   _user_turns_left=list(getattr(task, "user_turns", None) or []))


def _take_turn(episode: Episode, completion: Completion, tokenizer, options: RolloutOptions) -> None:
    """Record one sampled assistant turn; then finish the episode or append the world's reply."""
    room = options.max_completion_length - len(episode.response_ids)
    cut = len(completion.token_ids) > room
    token_ids = completion.token_ids[:room]
    logprobs = (completion.logprobs or [0.0] * len(completion.token_ids))[:room]
    text = tokenizer.decode(token_ids, skip_special_tokens=True) if cut else completion.text
    episode.response_ids += token_ids
    episode.loss_mask += [1] * len(token_ids)
    episode.sampling_logprobs += [float(x) for x in logprobs]
    parsed = parse_completion(text)
    episode.turns.append(text)
    episode.parsed_turns.append(parsed)

    if completion.truncated or cut:
        episode.truncated = episode.done = True
        return
    history = episode.messages
    episode.messages = history + [{"role": "assistant", "content": completion.text}]
    if episode.env is None:            # single-turn task: one answer, scored as is
        episode.done = True
        return
    reply = _world_reply(episode, parsed, options)
    if reply is None:
        episode.done = True
        return
    _append_world_tokens(episode, history, reply, tokenizer, completion, options)


def _world_reply(episode: Episode, parsed: ParsedCompletion, options: RolloutOptions) -> list[dict] | None:
    """The messages that answer the model's turn: tool results, the next user turn, or None (end)."""
    if parsed.calls and episode._rounds_this_turn < options.max_tool_rounds:
        episode._rounds_this_turn += 1
        episode.num_tool_calls += len(parsed.calls)
        return [{"role": "tool", "name": call.name, "content": _execute(episode.env, call)}
                for call in parsed.calls]
    if episode._user_turns_left:
        episode._rounds_this_turn = 0
        return [{"role": "user", "content": episode._user_turns_left.pop(0)}]
    return None


def _execute(env, call: ToolCall) -> str:
    try:
        return str(env.execute(call))
    except Exception as err:  # a broken tool must not kill the whole batch: the model sees the error
        logger.debug("tool %s raised %r", call.name, err)
        return f"Error: {type(err).__name__}: {err}"


def _append_world_tokens(episode: Episode, history: list[dict], reply: list[dict], tokenizer,
                         completion: Completion, options: RolloutOptions) -> None:
    text = continuation_text(tokenizer, episode.task.tools, history, completion.text, reply,
                             ended_with_eos=completion.finish_reason == "stop")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    room = options.max_completion_length - len(episode.response_ids)
    if len(ids) >= room:   # no room left for another model turn
        episode.truncated = episode.done = True
        return
    episode.response_ids += ids
    episode.loss_mask += [0] * len(ids)
    episode.sampling_logprobs += [0.0] * len(ids)
    episode.messages = episode.messages + reply


def continuation_text(tokenizer, tools, history: list[dict], assistant_text: str, reply: list[dict], *,
                      ended_with_eos: bool) -> str:
    """The text between the end of the sampled assistant tokens and the next generation point.

    With ChatML that is "\\n<|im_start|>tool\\n...<|im_end|>\\n<|im_start|>assistant\\n": the end of
    the assistant turn that the template adds after the sampled end-of-turn token, the reply, and
    the next generation prompt.
    """
    assistant = {"role": "assistant", "content": assistant_text}
    prompt = render_prompt(tokenizer, history, tools, add_generation_prompt=True)
    closed = render_prompt(tokenizer, history + [assistant], tools, add_generation_prompt=False)
    opened = render_prompt(tokenizer, history + [assistant] + reply, tools, add_generation_prompt=True)
    if not opened.startswith(closed):
        common = _common_prefix_length(closed, opened)
        logger.debug("chat template is not prefix-stable; continuing after %d common characters", common)
        return opened[common:]
    glue = ""
    if closed.startswith(prompt + assistant_text):
        glue = closed[len(prompt) + len(assistant_text):]   # e.g. "<|im_end|>\n"
        eos = tokenizer.eos_token or ""
        if ended_with_eos and eos and glue.startswith(eos):
            glue = glue[len(eos):]                            # the sampled tokens already hold it
    return glue + opened[len(closed):]


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
