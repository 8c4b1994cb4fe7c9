"""AWPO's estimators through verl's own code: NaiveRewardManager scoring, compute_advantage (legacy and v1).

Every expectation is ``awpo_kernels.group_advantages`` on the very scores verl stored in
``non_tensor_batch``, grouped by uid; the rows reach verl shuffled.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl_helpers import make_batch, score_with_naive_manager

import awpo_kernels as ak
from awpo.integrations.verl import ESTIMATOR_NAMES, VERL_NAMES, shim
from awpo.judges import JudgeRequest, RuleJudge, judge_many
from awpo.rewards import outcome_reward
from awpo.toolcall import parse_completion


def algorithm(estimator: str = "awpo", **awpo_options) -> OmegaConf:
    """verl's `algorithm` section as the trainer passes it (a DictConfig)."""
    config = {"adv_estimator": estimator, "gamma": 1.0, "lam": 1.0, "norm_adv_by_std_in_grpo": True,
              "use_kl_in_reward": False}
    if awpo_options:
        config["awpo"] = awpo_options
    return OmegaConf.create(config)


def expected_advantages(batch, estimator: str = "awpo", **kernel_options) -> torch.Tensor:
    """group_advantages on the scores in non_tensor_batch, each group laid out contiguously, in row order."""
    uids = list(batch.non_tensor_batch["uid"])
    outcome = torch.tensor(np.asarray(batch.non_tensor_batch["outcome"], dtype=np.float64), dtype=torch.float32)
    reasoning = torch.tensor(np.asarray(batch.non_tensor_batch["reasoning"], dtype=np.float64), dtype=torch.float32)
    order = sorted(range(len(uids)), key=lambda row: (uids[row], row))
    sizes = {uids.count(u) for u in uids}
    assert len(sizes) == 1, "this helper takes groups of one size"
    index = torch.tensor(order)
    adv = ak.group_advantages(outcome[index], reasoning[index], group_size=sizes.pop(), estimator=estimator,
                              **kernel_options).advantages
    result = torch.empty_like(adv)
    result[index] = adv
    return result


def assert_row_advantages(batch, expected: torch.Tensor) -> None:
    mask = batch.batch["response_mask"].float()
    for key in ("advantages", "returns"):
        torch.testing.assert_close(batch.batch[key], expected.unsqueeze(-1) * mask, rtol=1e-5, atol=1e-6)


def ray_trainer():
    from verl.trainer.ppo import ray_trainer as module

    return module


def test_naive_reward_manager_stores_awpo_scores(scored_batch):
    batch, texts = scored_batch()
    judge = RuleJudge()
    for row, text in enumerate(texts):
        truth = batch.non_tensor_batch["reward_model"][row]["ground_truth"]
        extra = batch.non_tensor_batch["extra_info"][row]
        tools = json.loads(extra["tools"])
        parsed = parse_completion(text)
        outcome = outcome_reward(text, json.loads(truth), tools=tools)
        # the request compute_score builds: unparsable call markup (malformed) scores 0 from every judge
        request = JudgeRequest(extra["request"], parsed.reasoning, parsed.calls, tools, json.loads(truth),
                               malformed=parsed.error is not None)
        reasoning = judge_many(judge, [request])[0]
        assert batch.non_tensor_batch["outcome"][row] == outcome
        assert batch.non_tensor_batch["reasoning"][row] == pytest.approx(reasoning, nan_ok=True)
        last = int(batch.batch["response_mask"][row].sum()) - 1
        assert batch.batch["token_level_scores"][row, last] == outcome  # verl's score is the outcome
    outcomes = batch.non_tensor_batch["outcome"]
    assert set(outcomes) == {0.0, 1.0}
    assert 0.0 in set(batch.non_tensor_batch["reasoning"])  # a completion without <think> scores 0.0 (SPEC 1)


def test_awpo_through_verl_compute_advantage_matches_group_advantages(scored_batch):
    module = ray_trainer()
    assert shim.is_patched(module.compute_advantage)
    batch, _ = scored_batch()
    uids = list(batch.non_tensor_batch["uid"])
    assert uids != sorted(uids, key=uids.index), "the rows must reach verl out of group order"
    out = module.compute_advantage(batch, adv_estimator="awpo", config=algorithm())
    expected = expected_advantages(out)
    assert_row_advantages(out, expected)
    failing = [row for row, uid in enumerate(uids) if uid == "prompt-5"]  # all outcomes 0: reasoning alone speaks
    assert all(out.non_tensor_batch["outcome"][row] == 0.0 for row in failing)
    assert expected[failing].abs().max() > 0.1
    grpo = module.compute_advantage(batch, adv_estimator="grpo", config=algorithm("grpo"))
    assert grpo.batch["advantages"][failing].abs().max() == 0  # verl's grpo: nothing to learn there


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_every_registered_estimator_matches_its_awpo_kernels_estimator(scored_batch, name):
    from verl.trainer.ppo import core_algos

    assert name in core_algos.ADV_ESTIMATOR_REGISTRY
    batch, _ = scored_batch(seed=1)
    out = ray_trainer().compute_advantage(batch, adv_estimator=name, config=algorithm(name))
    assert_row_advantages(out, expected_advantages(out, VERL_NAMES[name]))


def test_registered_names_cover_awpo_kernels_estimators_but_grpo():
    from awpo_kernels.advantages import ESTIMATORS

    assert set(VERL_NAMES.values()) == set(ESTIMATORS) - {"grpo"}
    assert ESTIMATOR_NAMES == ("awpo", "awpo_mixed", "awpo_reward_sum", "awpo_gdpo")
    from verl.trainer.ppo import core_algos

    assert core_algos.get_adv_estimator_fn("gdpo").__module__ == "verl.trainer.ppo.core_algos"  # verl's own, kept


def test_options_from_the_algorithm_config(scored_batch):
    batch, _ = scored_batch(seed=2)
    config = algorithm(gate="hard", weight="bernoulli", reasoning_coef=0.5, clip_ratio=0.3, outcome_range=[0, 1])
    config.norm_adv_by_std_in_grpo = False  # verl's switch -> scale "none"
    out = ray_trainer().compute_advantage(batch, adv_estimator="awpo", config=config)
    expected = expected_advantages(out, gate="hard", weight="bernoulli", reasoning_coef=0.5, clip_ratio=0.3,
                                   scale="none")
    assert_row_advantages(out, expected)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['gaet'\]"):
        ray_trainer().compute_advantage(batch, adv_estimator="awpo", config=algorithm(gaet="hard"))
    with pytest.raises(ValueError, match="clip_shrink"):
        ray_trainer().compute_advantage(batch, adv_estimator="awpo", config=algorithm(clip_shrink=0.5))


def test_custom_score_keys_and_no_reasoning(scored_batch):
    batch, _ = scored_batch(seed=3)
    batch.non_tensor_batch["tool_ok"] = batch.non_tensor_batch.pop("outcome")
    out = ray_trainer().compute_advantage(batch, adv_estimator="awpo",
                                          config=algorithm(outcome_key="tool_ok", reasoning_key=None))
    batch.non_tensor_batch["outcome"] = batch.non_tensor_batch["tool_ok"]
    batch.non_tensor_batch["reasoning"] = np.full(len(batch), math.nan)
    assert_row_advantages(out, expected_advantages(batch, "grpo"))  # no reasoning: AWPO is GRPO (SPEC 2, property 1)


def test_groups_of_different_sizes(tokenizer):
    sizes = [4, 3, 4, 2, 3, 4]
    batch = score_with_naive_manager(make_batch(tokenizer, group_sizes=sizes, seed=4)[0], tokenizer)
    out = ray_trainer().compute_advantage(batch, adv_estimator="awpo", config=algorithm())
    nt = out.non_tensor_batch
    for uid in set(nt["uid"]):
        rows = [r for r, u in enumerate(nt["uid"]) if u == uid]
        outcome = torch.tensor([float(nt["outcome"][r]) for r in rows])
        reasoning = torch.tensor([float(nt["reasoning"][r]) for r in rows])
        expected = ak.group_advantages(outcome, reasoning, group_size=len(rows)).advantages
        mask = out.batch["response_mask"][rows].float()
        torch.testing.assert_close(out.batch["advantages"][rows], expected.unsqueeze(-1) * mask, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="groups of one size"):
        ray_trainer().compute_advantage(batch, adv_estimator="awpo_gdpo", config=algorithm("awpo_gdpo"))


def test_bad_batches_are_named(scored_batch):
    batch, _ = scored_batch(seed=5)
    del batch.non_tensor_batch["reasoning"]
    with pytest.raises(KeyError, match="no 'reasoning' scores"):
        ray_trainer().compute_advantage(batch, adv_estimator="awpo", config=algorithm())
    batch, _ = scored_batch(seed=5)
    batch.non_tensor_batch["uid"][0] = "a prompt of its own"
    with pytest.raises(ValueError, match="uid 'a prompt of its own' has a single completion"):
        ray_trainer().compute_advantage(batch, adv_estimator="awpo", config=algorithm())
    batch, _ = scored_batch(seed=5)
    outcome = batch.non_tensor_batch["outcome"].astype(object)
    outcome[1] = "1.0"
    batch.non_tensor_batch["outcome"] = outcome
    with pytest.raises(ValueError, match=r"non_tensor_batch\['outcome'\]\[1\] must be a number"):
        ray_trainer().compute_advantage(batch, adv_estimator="awpo", config=algorithm())


def test_without_the_shim_verl_gives_no_scores_and_the_error_says_why(scored_batch):
    batch, _ = scored_batch(seed=6)
    unpatched = ray_trainer().compute_advantage.__awpo_shim__  # verl 0.9.1's function as it ships
    with pytest.raises(RuntimeError, match="got no non_tensor_batch.*passes it only to its own 'gdpo'"):
        unpatched(batch, adv_estimator="awpo", config=algorithm())


def test_v1_multi_trajectory_entry_point(scored_batch):
    from verl.trainer.ppo.v1 import utils as v1_utils

    assert shim.is_patched(v1_utils.compute_advantage)
    batch, _ = scored_batch(seed=7)
    keys = [f"{uid}_{row}_0" for row, uid in enumerate(batch.non_tensor_batch["uid"])]
    out = v1_utils.compute_advantage_for_multi_trajectories(batch, batch_keys=keys, adv_estimator="awpo",
                                                            config=algorithm())
    assert_row_advantages(out, expected_advantages(out))


class MockedTransferQueue:
    """mocked: verl's TransferQueue (Ray actors and ZMQ) cannot run here; this one holds one batch in memory.

    kv_batch_get returns the stored TensorDict's fields (nested tensors, non-tensor stacks), as the real
    queue does, and like TransferQueue 0.1.11 it leaves unknown fields out (`BatchMeta.select_fields` keeps the
    known ones; with none left, `async_get_data` returns an empty TensorDict) and raises ValueError for unknown
    keys or partition; kv_batch_put records what verl writes back.
    """

    def __init__(self, keys, fields):
        from tensordict import TensorDict

        self.keys = list(keys)
        self.store = TensorDict(fields, batch_size=len(self.keys))
        self.put = {}

    def kv_batch_get(self, keys, partition_id, select_fields):
        from tensordict import TensorDict

        if list(keys) != self.keys or partition_id != "train":
            raise ValueError("keys or partition were not found!")
        present = [f for f in select_fields if f in self.store.keys()]
        return self.store.select(*present) if present else TensorDict({}, batch_size=0)

    def kv_batch_put(self, keys, partition_id, fields):
        assert list(keys) == self.keys
        self.put.update(dict(fields.items()))


@pytest.mark.parametrize("where", ["extra_fields", "fields"])
def test_v1_trainer_compute_advantage_fetches_the_scores(scored_batch, monkeypatch, where):
    """verl's v1 PPOTrainer._compute_advantage (patched) on a mocked TransferQueue.

    where="extra_fields": the agent loop's reward_extra_info per trajectory; "fields": a colocated
    reward model's score fields.
    """
    from tensordict import NonTensorStack
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1 import trainer_base

    batch, _ = scored_batch(seed=8)
    assert shim.is_patched(trainer_base.PPOTrainer._compute_advantage)
    nt, mask = batch.non_tensor_batch, batch.batch["response_mask"]
    lengths = mask.sum(-1).tolist()
    nested = lambda t: torch.nested.as_nested_tensor([t[r, :n] for r, n in enumerate(lengths)], layout=torch.jagged)
    keys = [f"{uid}_{row}_0" for row, uid in enumerate(nt["uid"])]
    fields = {"uid": NonTensorStack(*list(nt["uid"])), "response_mask": nested(mask),
              "rm_scores": nested(batch.batch["token_level_scores"])}
    if where == "extra_fields":
        fields["extra_fields"] = NonTensorStack(*[{"reward_extra_info": {
            "score": nt["outcome"][r], "outcome": nt["outcome"][r], "reasoning": nt["reasoning"][r]}}
            for r in range(len(keys))])
    else:
        fields["extra_fields"] = NonTensorStack(*[{"min_global_steps": 0} for _ in keys])
        fields["outcome"] = NonTensorStack(*[float(v) for v in nt["outcome"]])
        fields["reasoning"] = NonTensorStack(*[float(v) for v in nt["reasoning"]])
    queue = MockedTransferQueue(keys, fields)
    monkeypatch.setattr(trainer_base, "tq", queue)
    trainer = SimpleNamespace(config=OmegaConf.create({"algorithm": dict(algorithm()),
                                                      "actor_rollout_ref": {"rollout": {"n": 4}}}))
    meta = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")
    with pytest.raises(KeyError, match="no 'outcome' scores"):  # verl 0.9.1 as it ships: the scores stay behind
        trainer_base.PPOTrainer._compute_advantage.__awpo_shim__(trainer, meta, metrics={})
    trainer_base.PPOTrainer._compute_advantage(trainer, meta, metrics={})  # verl's v1 code, patched
    written = torch.nested.to_padded_tensor(queue.put["advantages"], 0.0)
    expected = expected_advantages(batch).unsqueeze(-1) * mask.float()
    torch.testing.assert_close(written, expected[:, : written.shape[1]], rtol=1e-5, atol=1e-6)


def test_v1_score_fetch_reads_absent_fields_as_missing_and_lets_queue_errors_through():
    """`shim._field` means "the queue does not hold this field" by None, nothing else: a queue failure (unknown keys,
    a lost controller) propagates instead of turning into a missing-score error later."""
    from tensordict import NonTensorStack
    from transfer_queue import KVBatchMeta

    keys = ["a_0", "b_0"]
    queue = MockedTransferQueue(keys, {"outcome": NonTensorStack(1.0, 0.0)})
    meta = KVBatchMeta(keys=keys, tags=[{}, {}], partition_id="train")
    scores = shim.fetch_v1_scores(queue, meta, ("outcome", "reasoning"))
    assert list(scores) == ["outcome"] and list(scores["outcome"]) == [1.0, 0.0]  # no extra_fields, no reasoning
    with pytest.raises(ValueError, match="keys or partition were not found"):
        shim.fetch_v1_scores(queue, KVBatchMeta(keys=["c_0"], tags=[{}], partition_id="train"), ("outcome",))

    class LostController:
        def kv_batch_get(self, **kwargs):
            raise ConnectionError("TransferQueue controller unreachable")

    with pytest.raises(ConnectionError, match="controller unreachable"):
        shim.fetch_v1_scores(LostController(), meta, ("outcome",))


def test_v1_flow_from_verls_reward_loop_worker_to_the_advantages(tokenizer, tmp_path, monkeypatch):
    """verl 0.9.1's current reward path (experimental/reward_loop: RewardLoopWorker with the example config's
    custom_reward_function, called per trajectory as the agent loop calls it) -> each trajectory's
    extra_fields["reward_extra_info"] as the agent loop stores it -> the v1 trainer's _compute_advantage (patched)
    on a mocked TransferQueue -> the advantages verl writes back. Ray, vLLM and the queue's actors are what does
    not run here; the worker and the trainer method are verl's own code, called directly."""
    from hydra import compose, initialize_config_dir
    from tensordict import NonTensorStack
    from transfer_queue import KVBatchMeta
    from verl import DataProto
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.v1 import trainer_base

    from awpo.integrations.verl.reward import compute_score

    tokenizer.save_pretrained(tmp_path)  # the worker loads the policy's tokenizer from the model path
    examples = str(Path(__file__).resolve().parents[2] / "examples" / "verl")
    with initialize_config_dir(config_dir=examples, version_base=None):
        config = compose("awpo_tool_use", overrides=[f"actor_rollout_ref.model.path={tmp_path}"])
    worker = RewardLoopWorker(config, reward_router_address=None)

    batch, texts = make_batch(tokenizer, seed=9)
    results = []
    for row in range(len(batch)):  # the agent loop's per-trajectory call (agent_loop.py, "compute_score.remote")
        item = batch[row:row + 1]
        single = DataProto(batch=item.batch.select("prompts", "responses", "attention_mask", "input_ids"),
                           non_tensor_batch={**item.non_tensor_batch, "__num_turns__": np.array([2]),
                                             "tool_extra_fields": np.array([{"raw_prompt": "..."}], dtype=object)})
        results.append(worker.loop.run_until_complete(worker.compute_score(single)))
    for row, result in enumerate(results):  # verl's manager called awpo's compute_score on the decoded response
        nt = batch.non_tensor_batch
        direct = compute_score(nt["data_source"][row], texts[row], nt["reward_model"][row]["ground_truth"],
                               dict(nt["extra_info"][row]))
        assert result["reward_score"] == direct["score"]
        assert result["reward_extra_info"] == pytest.approx(direct, nan_ok=True)

    mask = batch.batch["response_mask"]
    lengths = mask.sum(-1).tolist()
    scores = torch.zeros(mask.shape)
    for row, result in enumerate(results):
        scores[row, lengths[row] - 1] = result["reward_score"]  # rm_scores: the score on the last token
    nested = lambda t: torch.nested.as_nested_tensor([t[r, :n] for r, n in enumerate(lengths)], layout=torch.jagged)
    keys = [f"{uid}_{row}_0" for row, uid in enumerate(batch.non_tensor_batch["uid"])]
    fields = {"uid": NonTensorStack(*list(batch.non_tensor_batch["uid"])), "response_mask": nested(mask),
              "rm_scores": nested(scores),
              "extra_fields": NonTensorStack(*[{"reward_extra_info": r["reward_extra_info"], "raw_prompt": "..."}
                                               for r in results])}
    queue = MockedTransferQueue(keys, fields)
    monkeypatch.setattr(trainer_base, "tq", queue)
    trainer = SimpleNamespace(config=OmegaConf.create({"algorithm": dict(algorithm()),
                                                      "actor_rollout_ref": {"rollout": {"n": 4}}}))
    trainer_base.PPOTrainer._compute_advantage(trainer, KVBatchMeta(keys=keys, tags=[{} for _ in keys],
                                                                    partition_id="train"), metrics={})
    batch.non_tensor_batch["outcome"] = np.array([r["reward_extra_info"]["outcome"] for r in results])
    batch.non_tensor_batch["reasoning"] = np.array([r["reward_extra_info"]["reasoning"] for r in results])
    written = torch.nested.to_padded_tensor(queue.put["advantages"], 0.0)
    expected = expected_advantages(batch).unsqueeze(-1) * mask.float()
    torch.testing.assert_close(written, expected[:, : written.shape[1]], rtol=1e-5, atol=1e-6)
    assert written.abs().max() > 0.1
