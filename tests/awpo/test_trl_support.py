"""Helpers of the AWPOTrainer tests (test_trl*.py); no tests here.

A random tiny model writes no tool call, so every reward would be 0 and every advantage 0: nothing to train
on. `ScriptedRollout` is a TRL `rollout_func` (TRL's hook for custom rollouts) that answers each built-in task
with one of a few scripted completions instead of sampling: right or wrong calls, with or without reasoning,
chosen by the completion's position in the global batch. The rewards, advantages, log-probs, loss and update
are then all real, and a run does not depend on how the batch is split over processes.
"""
from __future__ import annotations

import json
import os

import torch

from awpo.bfcl.scripted import first_acceptable_calls
from awpo.data import builtin_dataset
from awpo.toolcall import format_tool_calls

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in TRL


def scripted_completions(ground_truth: list) -> list[str]:
    """Four completions of a task, from best to worst, then a fifth that fails the exact outcome (an
    argument the tool does not have) with reasoning the grounded rule judge scores above 0."""
    acceptable = first_acceptable_calls(ground_truth) if ground_truth else []
    calls = format_tool_calls(acceptable) if acceptable else ""
    names = ", ".join(next(iter(call)) for call in ground_truth) or "no tool"
    extra = format_tool_calls([{"name": c["name"], "arguments": {**c["arguments"], "note": "extra"}} for c in acceptable])
    return [
        f"<think>The request needs {names}; I fill the values from it.</think>\n{calls}",
        calls or "Sorry, none of the tools fits.",
        "<think>I am not sure which tool fits, so I call nothing.</think>\nI cannot help.",
        "<tool_call>\n{not json}\n</tool_call>",
        f"<think>The request needs {names}; I fill the values from it.</think>\n{extra}",
    ]


class ScriptedRollout:
    """`rollout_func(prompts, trainer)`: completion k of a group follows `pattern[(group + k) % len]`.

    Odd groups get only completions that fail the exact outcome (with ``graded_outcome=False``, a group whose
    outcomes are all equal, which AWPO still learns from through the reasoning score).
    """

    def __init__(self, dataset):
        self.truths = {json.dumps(row["prompt"]): json.loads(row["ground_truth"]) for row in dataset}

    def __call__(self, prompts, trainer) -> dict:
        tokenizer = trainer.processing_class
        group = trainer.num_generations
        offset = trainer.accelerator.process_index * len(prompts)
        prompt_ids, completion_ids = [], []
        for i, prompt in enumerate(prompts):
            position = offset + i
            texts = scripted_completions(self.truths[json.dumps(prompt)])
            index = position // group
            choice = (index + position % group) % 4
            if index % 2 == 1:  # all fail the exact outcome; the reasoning scores differ (0 and > 0)
                choice = 3 + (position % 2)
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
            prompt_ids.append(list(ids["input_ids"]))
            completion_ids.append(tokenizer(texts[choice], add_special_tokens=False).input_ids
                                  + [tokenizer.eos_token_id])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def tiny_dataset(n: int = 4, seed: int = 0):
    """Built-in tasks without the worked examples (shorter prompts for the tiny model)."""
    return builtin_dataset("train", n=n, seed=seed, categories=("simple", "multiple"), worked_examples=False)


def cpu_args(output_dir, **overrides):
    """An AWPOConfig for a fast, deterministic CPU run."""
    from awpo.integrations.trl import AWPOConfig

    options = dict(output_dir=str(output_dir), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                   logging_steps=1, num_generations=4, per_device_train_batch_size=8, max_steps=2,
                   learning_rate=1e-2, max_completion_length=64, seed=0, disable_tqdm=True,
                   dataloader_num_workers=0)
    options.update(overrides)
    return AWPOConfig(**options)


def loss_inputs(tokenizer, *, batch=6, prompt_len=5, completion_len=7, seed=0, sequence_ratio=False):
    """A micro-batch as GRPOTrainer's `_generate_and_score_completions` hands it to `_compute_loss`."""
    gen = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    prompt_ids = torch.randint(0, vocab, (batch, prompt_len), generator=gen)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :2] = 0  # left padding
    prompt_ids[prompt_mask == 0] = tokenizer.pad_token_id
    completion_ids = torch.randint(0, vocab, (batch, completion_len), generator=gen)
    lengths = torch.tensor([7, 3, 5, 7, 1, 6])[:batch]
    completion_mask = (torch.arange(completion_len)[None] < lengths[:, None]).long()
    completion_ids[completion_mask == 0] = tokenizer.pad_token_id
    noise = lambda scale: torch.randn(batch, completion_len, generator=gen) * scale  # noqa: E731
    ratio_shape = (batch, 1) if sequence_ratio else (batch, completion_len)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.randn(batch, generator=gen),
        "num_items_in_batch": completion_mask.sum() * 3,  # a generation batch larger than this micro-batch
        "old_per_token_logps": noise(0.3) - 6.5,            # around the tiny model's log-probs: ratios clip
        "ref_per_token_logps": noise(0.3) - 6.5,
        "importance_sampling_ratio": 0.5 + torch.rand(ratio_shape, generator=gen),
    }
