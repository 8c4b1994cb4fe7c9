"""Helpers of the verl plugin tests (imported by the tests and by conftest.py).

- ``build_tokenizer()``: a real Hugging Face tokenizer (byte-level BPE, ChatML template) trained offline in
  milliseconds: verl's reward managers decode token ids with it, so texts round-trip exactly;
- ``make_batch(...)``: a verl ``DataProto`` of built-in tool-use tasks x completions (right answer with
  reasoning, right answer without, wrong argument, malformed, ...), rows shuffled, as verl's rollout
  leaves it: prompts left-padded, responses right-padded, ``uid`` per prompt, ``reward_model`` and
  ``extra_info`` from the parquet export's rows;
- ``score_with_naive_manager(...)``: verl's NaiveRewardManager with awpo's compute_score, then what the
  trainer does with its output.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from awpo.bfcl.scripted import first_acceptable_calls
from awpo.data import builtin_tasks
from awpo.integrations.verl.data import task_row
from awpo.toolcall import ToolCall, format_tool_calls

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(['<think>I call get_weather.</think>\n<tool_call>\n{"name": "x"}\n</tool_call>'] * 4,
                            trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def completions_for(task, rng: random.Random) -> list[str]:
    """Four completions of one task whose outcomes and reasoning scores differ."""
    calls = first_acceptable_calls(task.ground_truth)
    names = ", ".join(c["name"] for c in calls) or "none of the tools"
    values = " ".join(str(v) for c in calls for v in c["arguments"].values())
    good = f"<think>The request needs {names} with {values}.</think>\n" + format_tool_calls(calls)
    if not calls:
        good = "<think>No tool fits this request, none of the functions is relevant.</think>\nI cannot help with that."
    wrong = [ToolCall(c["name"], {k: "wrong value" for k in c["arguments"]}) for c in calls] or [ToolCall("get_weather", {})]
    return [
        good,
        format_tool_calls(calls) if calls else "No tool fits.",  # right answer, no reasoning
        f"<think>I will call {names} somehow, maybe with other values {rng.random():.3f}.</think>\n"
        + format_tool_calls(wrong),
        "<think>" + " ".join(rng.choice(["call", "the", "tool", "now", "maybe"]) for _ in range(12))
        + '</think>\n<tool_call>\n{"name": broken\n</tool_call>',
    ]


def all_wrong_completions(task, rng: random.Random) -> list[str]:
    """Four completions that all fail (each call carries an argument the tool does not have: equal
    outcomes) with reasoning of different quality for the grounded rule judge (the i-th states i
    invented values)."""
    calls = first_acceptable_calls(task.ground_truth)
    names = ", ".join(c["name"] for c in calls) or "a tool"
    wrong = format_tool_calls([{"name": c["name"], "arguments": {**c["arguments"], "note": "extra"}} for c in calls])
    invented = [f'"{rng.choice("qxz")}{k}{rng.randrange(100)}"' for k in range(3)]
    return [f"<think>The request needs {names}, so I call it {' '.join(invented[:i])}</think>\n{wrong}"
            for i in range(4)]


def _left_pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)


def _right_pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def make_batch(tokenizer, *, prompts: int = 6, seed: int = 0, shuffle: bool = True, group_sizes=None):
    """(DataProto, texts): rollouts of built-in tasks as verl's trainer holds them before scoring.

    Prompt ``i`` gets ``group_sizes[i]`` completions (default 4); the last prompt's completions all
    fail. ``texts[row]`` is the completion text of that row (after the shuffle).
    """
    from verl import DataProto

    rng = random.Random(seed)
    tasks = builtin_tasks("train", n=prompts, seed=seed)
    group_sizes = group_sizes or [4] * prompts
    rows = []
    for index, (task, size) in enumerate(zip(tasks, group_sizes)):
        record = task_row(task, split="train", index=index)
        texts = all_wrong_completions(task, rng) if index == prompts - 1 else completions_for(task, rng)
        prompt_text = tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=False)
        for text in (texts * 2)[:size]:
            rows.append({"uid": f"prompt-{index}", "record": record, "text": text, "prompt": prompt_text})
    if shuffle:
        rng.shuffle(rows)
    pad = tokenizer.pad_token_id
    prompt_ids = _left_pad([tokenizer(r["prompt"])["input_ids"] for r in rows], pad)
    response_ids = _right_pad([tokenizer(r["text"])["input_ids"] for r in rows], pad)
    prompt_mask = torch.tensor([[0] * (prompt_ids.shape[1] - len(tokenizer(r["prompt"])["input_ids"]))
                                + [1] * len(tokenizer(r["prompt"])["input_ids"]) for r in rows])
    response_mask = torch.tensor([[1] * len(tokenizer(r["text"])["input_ids"])
                                  + [0] * (response_ids.shape[1] - len(tokenizer(r["text"])["input_ids"])) for r in rows])
    tensors = {"prompts": prompt_ids, "responses": response_ids, "response_mask": response_mask,
               "input_ids": torch.cat([prompt_ids, response_ids], dim=1),
               "attention_mask": torch.cat([prompt_mask, response_mask], dim=1)}
    non_tensors = {
        "uid": np.array([r["uid"] for r in rows], dtype=object),
        "data_source": np.array([r["record"]["data_source"] for r in rows], dtype=object),
        "reward_model": np.array([dict(r["record"]["reward_model"]) for r in rows], dtype=object),
        "extra_info": np.array([dict(r["record"]["extra_info"]) for r in rows], dtype=object),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors), [r["text"] for r in rows]


def score_with_naive_manager(batch, tokenizer):
    """verl's NaiveRewardManager with awpo's compute_score, then what the trainer does with its output."""
    from verl.workers.reward_manager import NaiveRewardManager

    from awpo.integrations.verl.reward import compute_score

    manager = NaiveRewardManager(tokenizer=tokenizer, num_examine=0, compute_score=compute_score)
    result = manager(batch, return_dict=True)
    batch.batch["token_level_scores"] = result["reward_tensor"]
    batch.non_tensor_batch.update({k: np.array(v) for k, v in result["reward_extra_info"].items()})
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    return batch
