"""AWPOTrainer with TRL's `environment_factory` (issue #22, point 3): the environments' rewards reach the outcome.

TRL 1.16 appends one reward column per environment class that defines `get_reward` (weight 1, named after the
class) after the reward functions; AWPO used to read columns 0 and 1 only, so that reward was silently dropped.
This runs TRL's real environment path on CPU: the pooled environment instances, `reset(**row)`, the tool-call
loop (TRL parses the scripted `<tool_call>`, calls the environment's method, appends the tool result and lets the
tiny model continue with HF generation), then `get_reward` per rollout in `_calculate_rewards`. The model's own
completions are scripted by a `rollout_func` (a random tiny model writes no tool call); everything after them is
TRL's. TRL's tool loop needs a chat template it can parse tool calls from: the tiny model gets TRL's own Qwen3
template (its tokenizer has the ChatML tokens that template uses).
"""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from datasets import Dataset
from test_trl_support import cpu_args

import awpo_kernels as ak
from awpo.integrations.trl import AWPOTrainer

pytestmark = pytest.mark.slow  # TRL's environment loop with HF generation (~25 s)

ANSWERS = {2: 1.0, 1: 0.5, 0: 0.0}  # submitted answer -> the environment's reward (no submission: None)


class SubmitEnv:
    """A stateful environment that owns part of the reward: the answer the model submits through its tool."""

    def reset(self, **row) -> None:
        self.answer = None
        self.row_id = row["id"]  # reset gets the dataset row

    def submit(self, answer: int) -> str:
        """Submit the final answer.

        Args:
            answer: The answer to submit.
        """
        self.answer = int(answer)
        return f"received {self.answer}"

    def get_reward(self) -> float | None:
        return None if self.answer is None else ANSWERS.get(self.answer, 0.0)


def call(answer: int) -> str:
    return "<tool_call>\n" + json.dumps({"name": "submit", "arguments": {"answer": answer}}) + "\n</tool_call>"


# completion k of a group: outcome (does it reason?), reasoning score, environment reward differ
COMPLETIONS = [f"<think>It is two.</think>\n{call(2)}", call(1), f"<think>Maybe zero.</think>\n{call(0)}",
               "I do not know."]


def scripted_rollout(prompts, trainer) -> dict:
    tokenizer = trainer.processing_class
    prompt_ids, completion_ids = [], []
    for position, prompt in enumerate(prompts):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompt_ids.append(list(ids["input_ids"]))
        text = COMPLETIONS[(position + position // trainer.num_generations) % len(COMPLETIONS)]
        completion_ids.append(tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def first_message(completion) -> str:
    """The first assistant message as TRL parsed it (the Qwen3 parser moves <think> text to its own field)."""
    return json.dumps(completion[0]) if isinstance(completion, list) else str(completion)


def outcome(prompts, completions, **kwargs) -> list[float]:
    """Part of the outcome that the reward function sees: 0.25 for a completion that reasons first."""
    return [0.25 if ("two." in first_message(c) or "zero." in first_message(c)) else 0.0 for c in completions]


def reasoning(prompts, completions, **kwargs) -> list[float]:
    return [0.8 if "two." in first_message(c) else (0.3 if "zero." in first_message(c) else math.nan)
            for c in completions]


@pytest.fixture(scope="module")
def tool_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model with TRL's Qwen3 chat template, whose tool calls TRL knows how to parse."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen3_chat_template

    path = tmp_path_factory.mktemp("tool-model")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = qwen3_chat_template
    tokenizer.save_pretrained(path)
    return str(path)


def test_environment_rewards_are_added_to_the_outcome_through_trls_environment_factory(tool_model_dir, tmp_path):
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is one plus one? ({i})"}],
                                  "id": f"task-{i}"} for i in range(4)])
    captured = []

    class Recording(AWPOTrainer):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            captured.append((self.last_rewards.clone(), self.last_advantages.advantages.clone(),
                             output.get("tool_mask")))
            return output

    args = cpu_args(tmp_path, outcome_range=[0.0, 1.25], max_tool_calling_iterations=1, max_completion_length=96,
                    graded_outcome=False, max_steps=1)
    trainer = Recording(model=tool_model_dir, reward_funcs=[outcome, reasoning], args=args, train_dataset=dataset,
                        environment_factory=SubmitEnv, rollout_func=scripted_rollout)
    assert trainer.reward_func_names == ["outcome", "reasoning", "SubmitEnv"]  # TRL appended the environment
    assert trainer.environment_reward_columns == [2]
    trainer.train()

    assert len(captured) == 1
    options = args.advantage_options().kernel_kwargs()
    for generation, (rewards, advantages, tool_mask) in enumerate(captured):
        assert rewards.shape == (8, 3)
        assert set(rewards[:, 0].tolist()) == {0.0, 0.25} and (~torch.isnan(rewards[:, 1])).any()
        env = rewards[:, 2]
        # TRL ran the tool: the environment saw each submitted answer (None where nothing was submitted)
        assert set(env[~torch.isnan(env)].tolist()) == set(ANSWERS.values()) and torch.isnan(env).any()
        assert tool_mask is not None and bool((tool_mask == 0).any())  # the tool result tokens are masked out
        folded = rewards[:, 0] + torch.nan_to_num(env)  # as TRL sums the columns (weight 1, NaN skipped)
        expected = ak.group_advantages(folded, rewards[:, 1], group_size=4, **options).advantages
        torch.testing.assert_close(advantages, expected)
        dropped = ak.group_advantages(rewards[:, 0], rewards[:, 1], group_size=4, **options).advantages
        assert (advantages - dropped).abs().max() > 0.1  # what ignoring the environment's reward gave

        # TRL's reward metrics describe what AWPO trains on: the outcome with the environment's reward
        logged = trainer.state.log_history[generation]
        assert logged["reward"] == pytest.approx(folded.mean().item(), abs=1e-6)
        zero_std = folded.view(-1, 4).std(dim=1).eq(0).float().mean().item()
        assert logged["frac_reward_zero_std"] == pytest.approx(zero_std, abs=1e-6)
        assert logged["rewards/SubmitEnv/mean"] == pytest.approx(torch.nanmean(env).item(), abs=1e-6)

    # a sum outside outcome_range is named, with the columns it adds up
    trainer.args.outcome_range = [0.0, 1.0]
    with pytest.raises(ValueError, match=r"'outcome' plus the environments' get_reward \('SubmitEnv'\).*outcome_range"):
        trainer.awpo_advantages(captured[0][0], group_size=4)


def test_multi_objective_aggregation_other_than_the_default_is_refused(tmp_path):
    with pytest.raises(ValueError, match="multi_objective_aggregation='normalize_then_sum' does not apply"):
        cpu_args(tmp_path, multi_objective_aggregation="normalize_then_sum")
