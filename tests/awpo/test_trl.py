"""awpo.integrations.trl: AWPOTrainer (a GRPOTrainer subclass), its config, rewards and data set, on CPU.

The runs use the offline tiny model (conftest.py) and `ScriptedRollout` (test_trl_support.py: TRL's
`rollout_func` hook answering with scripted completions, since a random tiny model writes no tool call and
would leave every advantage at 0). The distributed run is in test_trl_ddp.py, the vLLM one in test_trl_vllm.py.
"""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from test_trl_support import ScriptedRollout, cpu_args, loss_inputs, scripted_completions, tiny_dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

import awpo_kernels as ak
from awpo.bfcl.scripted import first_acceptable_calls
from awpo.data import builtin_dataset, builtin_tasks
from awpo.integrations.trl import (
    AWPOConfig,
    AWPOTrainer,
    OutcomeReward,
    ReasoningReward,
    outcome_reward,
    reasoning_reward,
)
from awpo.judges import LLMJudge
from awpo.rewards import outcome_reward as score_outcome
from awpo.toolcall import format_tool_calls


class RecordingAWPOTrainer(AWPOTrainer):
    """Keeps what each generation produced and what each loss call received."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generations, self.loss_inputs = [], []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.generations.append({"rewards": self.last_rewards.clone(),
                                 **{k: output[k].clone() for k in ("advantages", "epsilon_low", "epsilon_high")
                                    if k in output}})
        return output

    def _compute_loss(self, model, inputs):
        self.loss_inputs.append({k: inputs[k].clone() for k in ("advantages", "epsilon_low") if k in inputs})
        return super()._compute_loss(model, inputs)


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------

def test_two_awpo_steps_change_the_weights_with_group_advantages_of_the_stored_rewards_scripted_rollouts(
        tiny_model_dir, tmp_path):
    dataset = tiny_dataset()
    args = cpu_args(tmp_path, clip_shrink=0.5, gate="soft", weight="linear", graded_outcome=False)
    trainer = RecordingAWPOTrainer(model=tiny_model_dir, reward_funcs=[outcome_reward, reasoning_reward], args=args,
                                   train_dataset=dataset, rollout_func=ScriptedRollout(dataset))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()

    changed = max((v - before[k]).abs().max().item() for k, v in trainer.model.state_dict().items())
    assert changed > 1e-4
    assert len(trainer.generations) == 2 and len(trainer.loss_inputs) == 2
    options = args.advantage_options().kernel_kwargs()
    for generation, received in zip(trainer.generations, trainer.loss_inputs):
        rewards = generation["rewards"]
        assert rewards.shape == (8, 2) and not torch.isnan(rewards).any()
        assert rewards[:, 0].unique().numel() > 1 and rewards[:, 1].unique().numel() > 1
        expected = ak.group_advantages(rewards[:, 0], rewards[:, 1], group_size=4, **options)
        torch.testing.assert_close(generation["advantages"], expected.advantages)
        torch.testing.assert_close(generation["epsilon_low"], expected.epsilon_low)
        torch.testing.assert_close(generation["epsilon_high"], expected.epsilon_high)
        assert (expected.epsilon_low < args.epsilon).any()  # clip_shrink tightened some groups
        # the loss got the same values (TRL shuffles the batch before splitting it)
        torch.testing.assert_close(received["advantages"].sort().values, expected.advantages.sort().values)
        assert received["epsilon_low"].shape == (8,)
    logged = trainer.state.log_history[0]
    for name in ("awpo/adv/gate_mean", "awpo/adv/weight_mean", "awpo/adv/clipped_fraction",
                 "awpo/adv/zero_outcome_variance_groups", "clip_ratio/low_mean", "loss"):
        assert name in logged and math.isfinite(logged[name]), name
    assert logged["awpo/adv/zero_outcome_variance_groups"] == 0.5  # the scripted odd groups are all wrong
    assert logged["awpo/adv/rescued_groups"] == 0.5                # and AWPO still learns from them
    # TRL's completion log shows AWPO's advantages, not TRL's own
    assert list(trainer._logs["advantages"]) == pytest.approx(trainer.generations[-1]["advantages"].tolist())


def test_fused_loss_false_trains_with_trls_own_loss_on_awpo_advantages_scripted_rollouts(tiny_model_dir, tmp_path):
    dataset = tiny_dataset(2)
    trainer = RecordingAWPOTrainer(model=tiny_model_dir, args=cpu_args(tmp_path, fused_loss=False, max_steps=1),
                                   train_dataset=dataset, rollout_func=ScriptedRollout(dataset))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert max((v - before[k]).abs().max().item() for k, v in trainer.model.state_dict().items()) > 1e-4
    rewards = trainer.generations[0]["rewards"]
    expected = ak.group_advantages(rewards[:, 0], rewards[:, 1], group_size=4,
                                   **trainer.args.advantage_options().kernel_kwargs())
    torch.testing.assert_close(trainer.generations[0]["advantages"], expected.advantages)
    assert "entropy" in trainer.state.log_history[0]  # TRL's loss ran (it logs the entropy, the fused loss does not)


LOSS_CASES = {
    "dapo": dict(loss_type="dapo"),
    "grpo": dict(loss_type="grpo"),
    "bnpo": dict(loss_type="bnpo"),
    "dr_grpo": dict(loss_type="dr_grpo", max_completion_length=9),
    "gspo": dict(loss_type="grpo", importance_sampling_level="sequence"),
    "kl+delta": dict(loss_type="dapo", beta=0.05, use_bias_correction_kl=False, delta=1.3, epsilon_high=0.28),
    "vllm-is-token": dict(loss_type="dapo", vllm_importance_sampling_correction=True),
    "vllm-is-sequence": dict(loss_type="grpo", vllm_importance_sampling_correction=True,
                             vllm_importance_sampling_mode="sequence_truncate"),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_grpo_estimator_loss_and_gradients_equal_trl_grpo_compute_loss(tiny_model_dir, tmp_path, case):
    options = dict(LOSS_CASES[case], use_cpu=True, bf16=False, report_to=[], num_generations=2,
                   per_device_train_batch_size=6, gradient_accumulation_steps=2, temperature=0.7)
    dataset = tiny_dataset(2)
    theirs = GRPOTrainer(model=tiny_model_dir, reward_funcs=[outcome_reward],
                         args=GRPOConfig(output_dir=str(tmp_path / "trl"), **options), train_dataset=dataset)
    ours = AWPOTrainer(model=tiny_model_dir, reward_funcs=[outcome_reward], train_dataset=dataset,
                       args=AWPOConfig(output_dir=str(tmp_path / "awpo"), estimator="grpo", **options))
    inputs = loss_inputs(theirs.processing_class, sequence_ratio="sequence" in case)
    results = []
    for trainer in (theirs, ours):
        # the vLLM importance ratio is an input here: no vLLM engine is needed to apply it
        trainer.use_vllm = "vllm" in case
        trainer.current_gradient_accumulation_steps = 2
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, {k: v.clone() for k, v in inputs.items()})
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}))
    (their_loss, their_grads), (our_loss, our_grads) = results
    torch.testing.assert_close(our_loss, their_loss, rtol=1e-5, atol=1e-6)
    assert their_loss.abs() > 1e-4
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the clip fractions are token means (TRL takes a mean over sequences for GSPO's per-sequence ratio)
    metrics = ("kl",) if "kl" in case else ()
    if case != "gspo":
        metrics += ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
    for name in metrics:
        assert ours._metrics["train"][name] == pytest.approx(theirs._metrics["train"][name], abs=1e-6), name


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_eval_mode_loss_equals_trl_grpo_compute_loss(tiny_model_dir, tmp_path, loss_type):
    """In eval TRL neither accumulates nor splits the generation batch: no accumulation steps in any count."""
    options = dict(loss_type=loss_type, max_completion_length=9, use_cpu=True, bf16=False, report_to=[],
                   num_generations=2, per_device_train_batch_size=6, gradient_accumulation_steps=3,
                   steps_per_generation=3, temperature=0.7)
    dataset = tiny_dataset(2)
    theirs = GRPOTrainer(model=tiny_model_dir, reward_funcs=[outcome_reward],
                         args=GRPOConfig(output_dir=str(tmp_path / "trl"), **options), train_dataset=dataset)
    ours = AWPOTrainer(model=tiny_model_dir, reward_funcs=[outcome_reward], train_dataset=dataset,
                       args=AWPOConfig(output_dir=str(tmp_path / "awpo"), estimator="grpo", **options))
    inputs = loss_inputs(theirs.processing_class)
    losses = []
    for trainer in (theirs, ours):
        trainer.current_gradient_accumulation_steps = 3
        trainer.model.eval()
        with torch.no_grad():
            losses.append(trainer._compute_loss(trainer.model, {k: v.clone() for k, v in inputs.items()}))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert losses[0].abs() > 1e-4


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

def test_bad_configs_fail_at_construction_with_a_message_naming_the_option(tiny_model_dir, tmp_path):
    dataset = tiny_dataset(2)
    with pytest.raises(ValueError, match="reward_funcs: estimator='awpo' takes 2"):
        AWPOTrainer(model=tiny_model_dir, reward_funcs=[outcome_reward, reasoning_reward, outcome_reward],
                    args=cpu_args(tmp_path), train_dataset=dataset)
    with pytest.raises(ValueError, match="reward_funcs: estimator='grpo' takes 1"):
        AWPOTrainer(model=tiny_model_dir, reward_funcs=[outcome_reward, reasoning_reward],
                    args=cpu_args(tmp_path, estimator="grpo"), train_dataset=dataset)
    with pytest.raises(ValueError, match="args must be an AWPOConfig"):
        AWPOTrainer(model=tiny_model_dir, args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True),
                    train_dataset=dataset)
    bad_options = {
        "estimator": dict(estimator="ppo"), "gate": dict(gate="always"), "weight": dict(weight="cubic"),
        "clip_ratio": dict(clip_ratio=0.0), "clip_shrink": dict(clip_shrink=-1.0),
        "missing_reasoning_score": dict(missing_reasoning_score=1.5),
        "scale_rewards": dict(scale_rewards="batch"), "loss_type": dict(loss_type="cispo"),
        "entropy_coef": dict(entropy_coef=0.01), "use_bias_correction_kl": dict(beta=0.1),
        "reward_weights": dict(reward_weights=[1.0, 0.5]), "outcome_range": dict(outcome_range=[1.0, 0.0]),
    }
    for name, bad in bad_options.items():
        with pytest.raises(ValueError, match=name):
            cpu_args(tmp_path, **bad)
    with pytest.raises(ValueError, match="clip_shrink > 0 needs fused_loss=True"):
        cpu_args(tmp_path, clip_shrink=0.5, fused_loss=False)
    # estimators and gates come from awpo_kernels' own tuples
    from awpo_kernels.advantages import ESTIMATORS, GATES
    for estimator in ESTIMATORS:
        assert cpu_args(tmp_path, estimator=estimator).estimator == estimator
    for gate in GATES:
        assert cpu_args(tmp_path, gate=gate).gate == gate


def test_config_defaults_match_python_m_awpo_train(tmp_path):
    from awpo.config import Config

    ours, theirs = cpu_args(tmp_path), Config()
    for name in ("estimator", "gate", "gate_threshold", "weight", "reasoning_coef", "clip", "clip_ratio", "clip_max",
                 "clip_shrink", "graded_outcome", "missing_reasoning_score"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.fused_loss is True
    assert cpu_args(tmp_path, missing_reasoning_score="none").missing_reasoning_score is None


def test_a_none_outcome_is_a_clear_error_never_a_nan_advantage(tiny_model_dir, tmp_path):
    dataset = tiny_dataset(2)
    trainer = AWPOTrainer(model=tiny_model_dir, args=cpu_args(tmp_path), train_dataset=dataset)
    rewards = torch.tensor([[1.0, 0.5], [float("nan"), 0.2], [0.0, float("nan")], [0.0, 0.1]])
    with pytest.raises(ValueError, match="outcome reward 'outcome_reward'.*None or NaN for 1 of 4"):
        trainer.awpo_advantages(rewards, group_size=4)
    rewards[1, 0] = 1.0  # a NaN reasoning score is "no score", which AWPO handles
    assert torch.isfinite(trainer.awpo_advantages(rewards, group_size=4).advantages).all()
    # reward_funcs=None: awpo's own two rewards, bound to the config
    assert [f.__name__ for f in trainer.reward_funcs] == ["outcome_reward", "reasoning_reward"]


# ----------------------------------------------------------------------------------------------
# rewards and data
# ----------------------------------------------------------------------------------------------

def test_builtin_dataset_rows_score_with_the_trl_reward_functions():
    dataset = builtin_dataset("train", n=12, seed=3)
    tasks = builtin_tasks("train", n=12, seed=3)
    assert dataset.column_names == ["prompt", "ground_truth", "tools", "id", "category"]
    assert [row["id"] for row in dataset] == [task.id for task in tasks]
    for row, task in zip(dataset, tasks):
        assert json.loads(row["ground_truth"]) == task.ground_truth and json.loads(row["tools"]) == task.tools
        assert row["prompt"][-1] == {"role": "user", "content": task.user_prompt}
        assert all(set(m) == {"role", "content"} for m in row["prompt"])
        for tool in task.tools:  # listed Hermes-style in the system message
            assert f'"name":"{tool["name"]}"' in row["prompt"][0]["content"].replace(" ", "")
    columns = {"ground_truth": dataset["ground_truth"], "tools": dataset["tools"]}
    good = [[{"role": "assistant", "content": scripted_completions(json.loads(t))[0]}] for t in dataset["ground_truth"]]
    silent = [[{"role": "assistant", "content": format_tool_calls(first_acceptable_calls(json.loads(t)))}]
              for t in dataset["ground_truth"]]
    prompts = dataset["prompt"]
    assert outcome_reward(prompts=prompts, completions=good, **columns) == [1.0] * 12
    assert all(0.0 < s <= 1.0 for s in reasoning_reward(prompts=prompts, completions=good, **columns))
    # no reasoning: missing_reasoning_score (SPEC section 1), 0.0 by default, NaN with None
    assert reasoning_reward(prompts=prompts, completions=silent, **columns) == [0.0] * 12
    unscored = ReasoningReward(missing_reasoning_score=None)(prompts=prompts, completions=silent, **columns)
    assert all(math.isnan(s) for s in unscored)
    with pytest.raises(ValueError, match="multi_turn"):
        builtin_dataset("train", n=4, categories=("simple", "multi_turn"))
    with pytest.raises(ValueError, match="no 'ground_truth' column"):
        outcome_reward(prompts=prompts[:1], completions=good[:1])


def test_rewards_take_the_trainers_options_unless_set(tiny_model_dir, tmp_path):
    task = builtin_tasks("train", n=40, seed=1, categories=("parallel",))[0]
    half = format_tool_calls(first_acceptable_calls(task.ground_truth)[:1])  # one of the calls
    partial = score_outcome(half, task.ground_truth, graded=True, tools=task.tools)
    assert 0.0 < partial < 1.0
    columns = {"ground_truth": [json.dumps(task.ground_truth)], "tools": [json.dumps(task.tools)]}
    assert outcome_reward(prompts=[""], completions=[half], **columns) == [0.0]  # exact outside a trainer
    assert OutcomeReward(graded=True)(prompts=[""], completions=[half], **columns) == [partial]
    args = cpu_args(tmp_path, graded_outcome=True, missing_reasoning_score=0.25)
    judge = LLMJudge(lambda prompts: ["Score: 7/10"] * len(prompts), missing_reasoning_score=0.0)
    trainer = AWPOTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_dataset(2),
                          reward_funcs=[outcome_reward, ReasoningReward(judge=judge)])
    graded, judged = trainer.reward_funcs
    assert graded(prompts=[""], completions=[half], **columns) == [partial]
    assert judged(prompts=[""], completions=["<think>calling it</think>" + half], **columns) == [0.7]
    assert judged(prompts=[""], completions=[half], **columns) == [0.0]  # a judge you pass keeps its own rule
    rule = AWPOTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_dataset(2)).reward_funcs[1]
    assert rule(prompts=[""], completions=[half], **columns) == [0.25]   # awpo's default judge takes the config's


def test_example_script_trains_and_saves_with_generated_rollouts(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "trl_awpo.py"
    spec = importlib.util.spec_from_file_location("trl_awpo_example", path)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look their module up there
    spec.loader.exec_module(example)
    trainer = example.main([
        "--model", tiny_model_dir, "--train_tasks", "4", "--categories", "simple", "--worked_examples", "false",
        "--output_dir", str(tmp_path / "run"), "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
        "--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size", "4",
        "--max_completion_length", "8", "--save_strategy", "no", "--gate", "hard", "--missing_reasoning_score",
        "none", "--disable_tqdm", "true"])
    assert trainer.state.global_step == 1
    assert (trainer.args.gate, trainer.args.missing_reasoning_score) == ("hard", None)
    assert (tmp_path / "run" / "config.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run") is not None


def test_trl_loss_path_benchmark_baseline_computes_the_materialised_loss_and_gradients():
    from benchmarks import baselines
    from benchmarks.cases import implementations, make_inputs
    from benchmarks.shapes import SMOKE_LM_HEAD
    from benchmarks.trl_baselines import trl_grpo_loss

    assert "trl" in implementations("fused_linear_policy_loss", "cpu")
    shape = SMOKE_LM_HEAD[0]
    ours, theirs = (make_inputs("fused_linear_policy_loss", shape, torch.device("cpu"), seed=4) for _ in range(2))
    loss = trl_grpo_loss(ours.hidden, ours.weight, ours.targets, ours.advantages)
    loss.backward()
    expected = baselines.materialised_policy_loss(theirs.hidden, theirs.weight, theirs.targets, theirs.advantages)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.hidden.grad, theirs.hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-6)


def test_an_llm_judge_is_asked_afresh_each_batch_and_stops_training_when_it_never_answers():
    from awpo.judges import JudgeUnavailableError

    task = builtin_tasks("train", n=4, seed=2, categories=("simple",))[0]
    columns = {"ground_truth": [json.dumps(task.ground_truth)], "tools": [json.dumps(task.tools)]}
    completion = "<think>the weather tool fits</think>" + format_tool_calls(first_acceptable_calls(task.ground_truth))
    asked = []

    def answers(prompts):
        asked.append(len(prompts))
        return ["Score: 6/10"] * len(prompts)

    judged = ReasoningReward(judge=LLMJudge(answers))
    assert judged(prompts=["q"], completions=[completion], **columns) == [0.6]
    assert judged(prompts=["q"], completions=[completion], **columns) == [0.6]
    assert asked == [1, 1]  # the same completion is judged again in the next batch: the policy changed
    assert judged.judge.stats.requests == 1 and judged.judge.stats.failed == 0  # this batch's counts

    silent = ReasoningReward(judge=LLMJudge(lambda prompts: [None] * len(prompts), max_failed_steps=2))
    assert math.isnan(silent(prompts=["q"], completions=[completion], **columns)[0])
    with pytest.raises(JudgeUnavailableError, match="gave no score to any of the 2 requests of the last 2"):
        silent(prompts=["q"], completions=[completion], **columns)
