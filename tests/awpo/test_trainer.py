"""The training loop end to end on the tiny model with real vLLM rollouts on CPU.

The tiny random model never writes a correct tool call, so the real outcome reward would be 0 for
every completion and nothing would be learned. These tests therefore score completions with a
scripted reward (the share of even token ids in the completion): it varies within each group, so
the advantages, the loss and the update are all real; everything else (rollouts, log-probs, packing,
the fused loss, the optimizer, the weight sync, checkpoints) is the production path.
"""
import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import awpo_kernels as ak
from awpo import train as train_cli
from awpo import trainer as trainer_module
from awpo.checkpoint import latest_checkpoint, list_checkpoints, load_trainer_state
from awpo.config import Config, ConfigError
from awpo.data import Task
from awpo.policy_update import (
    RolloutBatch,
    UpdateOptions,
    last_hidden_states,
    lm_head_weight,
    pack,
    token_logprobs,
    update_policy,
)
from awpo.rollout.multiturn import RolloutOptions, run_episodes
from awpo.scoring import EpisodeScores
from awpo.trainer import DataStream, Trainer

TOOL = {"name": "get_weather", "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def short_tasks(n=5):
    cities = ["Paris", "Lima", "Oslo", "Rome", "Kyiv", "Quito", "Hanoi"]
    return [Task(id=f"w{i}", category="simple", messages=[{"role": "user", "content": f"Weather in {c}?"}],
                 tools=[TOOL], ground_truth=[{"get_weather": {"city": [c]}}]) for i, c in enumerate(cities[:n])]


def even_token_reward(episodes):
    """Scripted reward: share of even token ids among the sampled tokens (varies inside a group)."""
    values = []
    for e in episodes:
        sampled = [t for t, m in zip(e.response_ids, e.loss_mask) if m]
        values.append(sum(t % 2 == 0 for t in sampled) / max(len(sampled), 1))
    return EpisodeScores(outcome=values, exact=[float(v > 0.5) for v in values], reasoning=None)


def config_for(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), max_steps=2, prompts_per_step=2, num_generations=4,
                  per_device_train_batch_size=3, max_completion_length=10, temperature=1.0, learning_rate=3e-3,
                  estimator="grpo", eval_dataset="none", save_steps=1, save_total_limit=0, plot=False,
                  max_model_len=1024, seed=7, mask_truncated_completions=False,  # the random model never stops
                  vllm_importance_sampling_correction=True, bf16_autocast=False)  # fp32: tight comparisons
    values.update(overrides)
    return Config(**values)


def make_trainer(model_dir, engine, output_dir, **overrides):
    config = config_for(output_dir, model=model_dir, **overrides)
    return Trainer(config, engine=engine, train_tasks=short_tasks(), eval_tasks=short_tasks(3),
                   score_fn=even_token_reward)


def read_steps(output_dir):
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line for line in lines if "loss" in line}


def without_timings(record):
    return {k: v for k, v in record.items() if not k.startswith(("time/", "throughput/"))}


@pytest.fixture(scope="module")
def two_step_run(tiny_model_dir, tiny_vllm_engine, tmp_path_factory):
    """Two real training steps, a checkpoint after each."""
    output_dir = tmp_path_factory.mktemp("run-a")
    trainer = make_trainer(tiny_model_dir, tiny_vllm_engine, output_dir)
    result = trainer.train()
    return trainer, result, output_dir


def test_two_steps_change_the_weights_and_sync_them_into_vllm(two_step_run, tiny_model_dir, tiny_vllm_engine):
    trainer, result, output_dir = two_step_run
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trained = trainer.model
    changed = [name for name, p in trained.state_dict().items() if not torch.equal(p, initial.state_dict()[name])]
    assert changed, "training did not change any weight"

    steps = read_steps(output_dir)
    assert sorted(steps) == [1, 2]
    for record in steps.values():
        assert record["update/trained_tokens"] > 0 and record["update/optimizer_steps"] == 1
        assert record["grad_norm"] > 0 and record["adv/mean_abs"] > 0
        assert abs(record["is_weight"] - 1.0) < 1e-3   # vLLM and the trainer agree in fp32

    # vLLM now samples from the trained weights: its sampling log-probs are the trained model's
    tokenizer = trainer.tokenizer
    episodes = run_episodes(tiny_vllm_engine, tokenizer, short_tasks(2),
                            RolloutOptions(num_generations=2, temperature=1.0, max_completion_length=10, seed=3))
    for episode in episodes:
        micro = pack(_batch_of([episode]), [0], "cpu")
        new_lp, _ = token_logprobs(trained, micro, 1.0)
        old_lp, _ = token_logprobs(initial, micro, 1.0)
        torch.testing.assert_close(micro.sampling_logprobs, new_lp, atol=2e-4, rtol=0)
        assert (micro.sampling_logprobs - old_lp).abs().max() > 1e-3


def test_result_json_holds_both_evaluations_task_by_task(two_step_run):
    trainer, result, output_dir = two_step_run
    stored = json.loads((output_dir / "result.json").read_text())
    assert stored["steps"] == 2 and stored["config"]["seed"] == 7 and stored["final_model"] == result.final_model
    # the injected engine's dtype is the rollout dtype, whatever rollout_dtype auto would pick on this machine
    assert stored["precision"] == {"learner_dtype": "float32", "bf16_autocast": False, "rollout_dtype": "float32",
                                   "rollout_dtype_reason": "the injected engine's",
                                   "importance_sampling_correction": True,
                                   "importance_sampling_reason": "set by vllm_importance_sampling_correction"}
    for key in ("eval_before", "eval_after"):
        tasks = stored[key]["tasks"]
        assert [t["id"] for t in tasks] == ["w0", "w1", "w2"] and {t["category"] for t in tasks} == {"simple"}
        assert all(t["exact"] in (0.0, 1.0) and 0.0 <= t["graded"] <= 1.0 for t in tasks)
        assert stored[key]["accuracy"] == pytest.approx(sum(t["exact"] for t in tasks) / 3)
        # the evaluation's completions are kept, one per sample (greedy: one), as the model wrote them
        assert all(len(t["completions"]) == 1 and isinstance(t["completions"][0], str) for t in tasks)
    record = read_steps(output_dir)[1]
    assert record["adv/reasoning_share"] == 0.0   # grpo: all of the advantage is the outcome's
    assert 0.0 <= record["completion/with_reasoning_fraction"] <= 1.0


def test_eval_only_scores_the_starting_weights_and_trains_nothing(two_step_run, tiny_model_dir, tiny_vllm_engine,
                                                                  tmp_path):
    _, trained, _ = two_step_run
    trainer = make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path, eval_only=True)
    result = trainer.train()
    assert result.steps == 0 and result.accuracy_after is None and result.final_model is None
    assert list_checkpoints(tmp_path) == [] and not (tmp_path / "final").exists()
    stored = json.loads((tmp_path / "result.json").read_text())
    # the same base weights, tasks and greedy decoding as the two-step run's "before"
    assert stored["eval_before"]["tasks"] == trained.accuracy_before["tasks"]
    assert "Result:" in "\n".join(train_cli.summary_lines(result))


def test_eval_before_false_skips_the_first_evaluation(tiny_model_dir, tiny_vllm_engine, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path, eval_before=False, max_steps=1)
    result = trainer.train()
    assert result.accuracy_before is None and result.accuracy_after["num_tasks"] == 3
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["eval_before"] is None and len(stored["eval_after"]["tasks"]) == 3
    assert "after training (3 tasks" in "\n".join(train_cli.summary_lines(result))


def _batch_of(episodes, advantages=None):
    n = len(episodes)
    advantages = torch.zeros(n) if advantages is None else advantages
    return RolloutBatch([e.prompt_ids for e in episodes], [e.response_ids for e in episodes],
                        [e.loss_mask for e in episodes], [e.sampling_logprobs for e in episodes],
                        advantages, torch.full((n,), 0.2), torch.full((n,), 0.2))


def test_checkpoints_load_with_from_pretrained(two_step_run):
    trainer, result, output_dir = two_step_run
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-1", "checkpoint-2"]
    assert result.last_checkpoint.endswith("checkpoint-2")
    loaded = AutoModelForCausalLM.from_pretrained(output_dir / "checkpoint-2")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    AutoTokenizer.from_pretrained(output_dir / "checkpoint-2")
    final = AutoModelForCausalLM.from_pretrained(result.final_model)
    assert result.final_model == str(output_dir / "final")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(final.state_dict()[name], tensor), name


def test_resume_from_step_one_reproduces_step_two_exactly(two_step_run, tiny_model_dir, tiny_vllm_engine,
                                                         tmp_path):
    _, _, run_a = two_step_run
    shutil.copytree(run_a / "checkpoint-1", tmp_path / "checkpoint-1")
    (tmp_path / "metrics.jsonl").write_text((run_a / "metrics.jsonl").read_text())  # incl. step 2: dropped
    resumed = make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path, resume="latest")
    assert resumed.step == 1 and resumed.data.position == 2
    resumed.train()

    state_a, state_b = load_trainer_state(run_a / "checkpoint-2"), load_trainer_state(tmp_path / "checkpoint-2")
    model_a = AutoModelForCausalLM.from_pretrained(run_a / "checkpoint-2")
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, model_a.state_dict()[name]), name
    for key, slot in state_a["optimizer"]["state"].items():
        for name, value in slot.items():
            assert torch.equal(value, state_b["optimizer"]["state"][key][name]), (key, name)
    assert state_a["data_position"] == state_b["data_position"] == 4
    assert torch.equal(state_a["rng"]["torch"], state_b["rng"]["torch"])
    steps_a, steps_b = read_steps(run_a), read_steps(tmp_path)
    assert sorted(steps_b) == [1, 2]    # the old step-2 line was dropped and written again
    assert without_timings(steps_a[2]) == without_timings(steps_b[2])


def test_crash_mid_step_leaves_the_last_checkpoint_loadable(tiny_model_dir, tiny_vllm_engine, tmp_path,
                                                            monkeypatch):
    real_update = trainer_module.update_policy
    calls = []

    def crash_on_second_update(*args, **kwargs):  # scripted crash in the middle of step 2's update
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected crash")
        return real_update(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "update_policy", crash_on_second_update)
    trainer = make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path, max_steps=3)
    with pytest.raises(RuntimeError, match="injected crash"):
        trainer.train()
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "checkpoint-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "metrics.jsonl"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-1")
    resumed = make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path, max_steps=2, resume="latest")
    assert resumed.step == 1
    resumed.train()
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_a_fresh_run_refuses_another_runs_output_dir_unless_told_to_overwrite(two_step_run, tiny_model_dir,
                                                                            tiny_vllm_engine, tmp_path):
    _, _, run_a = two_step_run
    for name in ("checkpoint-1", "checkpoint-2"):
        shutil.copytree(run_a / name, tmp_path / name)
    (tmp_path / "metrics.jsonl").write_text((run_a / "metrics.jsonl").read_text())
    with pytest.raises(ValueError, match="already holds checkpoint-1, checkpoint-2, metrics.jsonl"):
        make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path)
    assert len(list_checkpoints(tmp_path)) == 2     # nothing was touched
    make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path, overwrite_output_dir=True)
    assert list_checkpoints(tmp_path) == [] and not (tmp_path / "metrics.jsonl").exists()


def test_resuming_an_older_checkpoint_refuses_newer_ones_unless_told_to_overwrite(two_step_run, tiny_model_dir,
                                                                                 tiny_vllm_engine, tmp_path):
    _, _, run_a = two_step_run
    for name in ("checkpoint-1", "checkpoint-2"):
        shutil.copytree(run_a / name, tmp_path / name)
    older = str(tmp_path / "checkpoint-1")
    with pytest.raises(ValueError, match="already holds checkpoint-2 .*resuming at step 1"):
        make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path, resume=older)
    resumed = make_trainer(tiny_model_dir, tiny_vllm_engine, tmp_path, resume=older, overwrite_output_dir=True)
    assert resumed.step == 1 and [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]


def test_resume_restores_the_rng_after_a_reseeding_engine_start_mocked(two_step_run, tiny_model_dir,
                                                                        tiny_vllm_engine, tmp_path, monkeypatch):
    """vLLM's worker reseeds python / numpy / torch when it starts; the checkpoint's RNG must win.
    The engine start is mocked (a reseed, then the shared engine) to avoid a second vLLM instance."""
    _, _, run_a = two_step_run
    shutil.copytree(run_a / "checkpoint-1", tmp_path / "checkpoint-1")

    def reseeding_engine_start(self, model_path):
        torch.manual_seed(0)
        return tiny_vllm_engine

    monkeypatch.setattr(Trainer, "_make_engine", reseeding_engine_start)
    config = config_for(tmp_path, model=tiny_model_dir, resume="latest")
    Trainer(config, train_tasks=short_tasks(), eval_tasks=[], score_fn=even_token_reward)
    assert torch.equal(torch.get_rng_state(), load_trainer_state(tmp_path / "checkpoint-1")["rng"]["torch"])


def model_and_rollouts(model_dir, engine, num_tasks, max_completion_length, seed):
    """The tiny model, synced into vLLM, and 4 real rollouts of each of `num_tasks` tasks."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    engine.sync_weights(model)
    episodes = run_episodes(engine, tokenizer, short_tasks(num_tasks), RolloutOptions(
        num_generations=4, temperature=1.0, max_completion_length=max_completion_length, seed=seed))
    return model, episodes


def test_a_non_finite_gradient_stops_the_update_before_the_optimizer_step(tiny_model_dir, tiny_vllm_engine):
    model, episodes = model_and_rollouts(tiny_model_dir, tiny_vllm_engine, 1, 6, seed=5)
    batch = _batch_of(episodes, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    with torch.no_grad():
        lm_head_weight(model)[:, 3] = float("nan")   # every logit NaN: loss and gradients too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(FloatingPointError, match="non-finite policy loss"):
        update_policy(model, optimizer, scheduler, batch, UpdateOptions(per_device_train_batch_size=4))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, equal_nan=True)


def test_update_raises_the_logprob_of_positive_advantage_completions(tiny_model_dir, tiny_vllm_engine):
    model, episodes = model_and_rollouts(tiny_model_dir, tiny_vllm_engine, 2, 9, seed=11)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, -1.0, 1.0, 0.0, 0.0])
    batch = _batch_of(episodes, advantages)
    before = [token_logprobs(model, pack(batch, [i], "cpu"), 1.0)[0].sum() for i in range(len(batch))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    metrics = update_policy(model, optimizer, scheduler, batch,
                            UpdateOptions(per_device_train_batch_size=3, max_grad_norm=0.0))
    after = [token_logprobs(model, pack(batch, [i], "cpu"), 1.0)[0].sum() for i in range(len(batch))]
    deltas = torch.stack(after) - torch.stack(before)
    assert metrics["update/trained_sequences"] == 6          # the two zero-advantage ones are skipped
    assert (deltas[advantages > 0] > 0).all() and (deltas[advantages < 0] < 0).all()


def test_hf_rollout_fallback_trains_one_step(tiny_model_dir, tmp_path):
    config = config_for(tmp_path, model=tiny_model_dir, rollout="hf", max_steps=1, num_generations=2,
                        max_completion_length=6)
    trainer = Trainer(config, train_tasks=short_tasks(), eval_tasks=[], score_fn=even_token_reward)
    assert type(trainer.engine).__name__ == "HFEngine"
    result = trainer.train()
    assert result.steps == 1 and read_steps(tmp_path)[1]["update/trained_tokens"] > 0


def test_data_stream_is_a_seeded_permutation_per_epoch():
    stream = DataStream(list(range(5)), seed=3)
    first, second = stream.next_batch(5), stream.next_batch(5)
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4] and first != second
    resumed = DataStream(list(range(5)), seed=3, position=7)
    assert resumed.next_batch(3) == second[2:5]


def test_bad_config_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="num_generations=1"):
        Trainer(config_for(tmp_path, num_generations=1))
    with pytest.raises(ConfigError, match="--model"):  # the preflight, before any model loads
        Trainer(config_for(tmp_path, model=str(tmp_path / "missing-model")))
    with pytest.raises(FileNotFoundError, match="--resume latest: no checkpoint"):
        Trainer(config_for(tmp_path, resume="latest"))


def test_shared_prompt_packing_matches_separate_sequences(tiny_model_dir):
    """Log-probs and gradients are the same whether a group's prompt is packed once (with a block
    mask) or once per sequence, and the same as running every sequence on its own."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(4)
    tokens = lambda n: torch.randint(3, 400, (n,), generator=generator).tolist()
    prompt_a, prompt_b = tokens(9), tokens(6)
    responses = [tokens(4), tokens(7), tokens(3), tokens(5), tokens(2)]
    masks = [[1, 1, 0, 1], [1] * 7, [0, 1, 1], [1, 0, 0, 1, 1], [1, 1]]
    batch = RolloutBatch([prompt_a] * 3 + [prompt_b] * 2, responses, masks,
                         [[-1.0] * len(r) for r in responses], torch.zeros(5), torch.zeros(5), torch.zeros(5))

    def logprobs_and_grad(share, indices):
        model.zero_grad()
        micro = pack(batch, indices, "cpu", share_prompts=share)
        hidden = last_hidden_states(model, micro)
        logp = ak.linear_logprobs(hidden, lm_head_weight(model), micro.targets).logprobs
        (logp * torch.linspace(0.5, 1.5, logp.numel())).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, micro

    shared_lp, shared_grad, shared = logprobs_and_grad(True, list(range(5)))
    flat_lp, flat_grad, flat = logprobs_and_grad(False, list(range(5)))
    assert shared.input_ids.shape[1] == 9 + 6 + sum(map(len, responses)) < flat.input_ids.shape[1]
    torch.testing.assert_close(shared_lp, flat_lp, atol=1e-5, rtol=0)
    for name in flat_grad:
        torch.testing.assert_close(shared_grad[name], flat_grad[name], atol=1e-5, rtol=1e-4)
    separate = torch.cat([token_logprobs(model, pack(batch, [i], "cpu"), 1.0)[0] for i in range(5)])
    torch.testing.assert_close(shared_lp, separate, atol=1e-5, rtol=0)


def test_eval_bfcl_scores_the_policy_before_and_after_with_bfcls_checker(tiny_model_dir, tiny_vllm_engine, tmp_path):
    """`--eval-bfcl`: real generation through the trainer's engine, BFCL's own checker, both tables."""
    output_dir = tmp_path / "run"
    trainer = make_trainer(tiny_model_dir, tiny_vllm_engine, output_dir, max_steps=1, save_steps=0,
                           eval_bfcl="irrelevance,simple_python", eval_bfcl_limit=2, eval_bfcl_max_tokens=8)
    result = trainer.train()

    for label, summary in (("before", result.bfcl_before), ("after", result.bfcl_after)):
        assert list(summary["results"]) == ["irrelevance", "simple_python"] and summary["limit"] == 2
        for category, scores in summary["results"].items():
            assert scores["total"] == 2 and scores["generation_errors"] == 0, (label, category, scores)
        written = json.loads((output_dir / f"bfcl-{label}" / "bfcl_results.json").read_text())
        assert written["results"] == summary["results"]
        assert all(entry["id"].startswith("simple_python") for entry in written["entries"]["simple_python"])
    # junk from a random model: BFCL's checker rejects every simple_python answer
    assert result.bfcl_after["results"]["simple_python"]["correct"] == 0
    assert result.bfcl_before["model"] == tiny_model_dir and result.bfcl_after["model"] == result.final_model
    table = (output_dir / "bfcl_comparison.md").read_text()
    assert "| irrelevance |" in table and "| simple_python |" in table and "| **overall** |" in table
    # the "before" scores travel in the checkpoint, so a resumed run compares against the true base
    assert load_trainer_state(latest_checkpoint(output_dir))["extra"]["bfcl_before"] == result.bfcl_before
