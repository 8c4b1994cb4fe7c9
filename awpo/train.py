"""`python -m awpo.train`: train a tool-using LLM with AWPO.

With no arguments it trains the default run (SmolLM2-135M-Instruct on the built-in tool-use tasks,
vLLM rollouts, sized for a 2-core CPU: the defaults of `awpo.config.Config`), shows a progress bar
with the live reward, and ends with the held-out accuracy before and after training. `--help` lists
every option with its default.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path


def _quiet_third_party_logs() -> None:
    # Must happen before vLLM is imported; a user's own setting wins.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*Triton is installed.*")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def summary_lines(result) -> list[str]:
    from .bfcl.report import comparison_table

    lines = []
    before, after = result.accuracy_before, result.accuracy_after
    if before and after:
        lines.append(f"Held-out accuracy ({after['num_tasks']} tasks, exact match): "
                     f"before {_percent(before['accuracy'])} -> after {_percent(after['accuracy'])}")
        for category in after["by_category"]:
            lines.append(f"  {category:<18} {_percent(before['by_category'].get(category, float('nan'))):>7} -> "
                         f"{_percent(after['by_category'][category]):>7}")
        lines.append(f"  partial credit     {_percent(before['graded']):>7} -> {_percent(after['graded']):>7}"
                     "   (graded outcome: names, parameters, values)")
        lines.append(f"  well-formed output {_percent(before['format_ok']):>7} -> {_percent(after['format_ok']):>7}")
    elif before or after:
        which, scores = ("before training", before) if before else ("after training", after)
        lines.append(f"Held-out accuracy {which} ({scores['num_tasks']} tasks, exact match): "
                     f"{_percent(scores['accuracy'])}")
        for category, value in scores["by_category"].items():
            lines.append(f"  {category:<18} {_percent(value):>7}")
        lines.append(f"  partial credit     {_percent(scores['graded']):>7}   "
                     "(graded outcome: names, parameters, values)")
        lines.append(f"  well-formed output {_percent(scores['format_ok']):>7}")
    if result.bfcl_comparison:
        lines.append(f"BFCL (official checker), before (A) and after (B): {result.bfcl_comparison}")
        lines.append(comparison_table(result.bfcl_before, result.bfcl_after).rstrip())
    if result.final_model is None:  # eval_only
        lines.append(f"Result: {Path(result.output_dir) / 'result.json'}")
        return lines
    lines.append(f"Metrics: {Path(result.output_dir) / 'metrics.jsonl'}"
                 + (f", plot: {result.plot}" if result.plot else ""))
    lines.append(f"Final model: {result.final_model}   (last checkpoint: {result.last_checkpoint})")
    return lines


def progress_fields(metrics: dict) -> dict[str, str]:
    """The progress bar's fields for one step's metrics. With the importance-sampling correction on,
    `lp_gap` is the mean |log pi_learner - log pi_rollout| over the step's trained tokens (`is_logratio_abs`
    in metrics.jsonl, beside `is_weight` and their min / max): the sampler / learner mismatch."""
    fields = {"reward": f"{metrics['reward/outcome_mean']:.3f}", "acc": f"{metrics['accuracy']:.3f}",
              "loss": f"{metrics.get('loss', 0.0):+.4f}"}
    if metrics.get("is_logratio_abs") is not None:
        fields["lp_gap"] = f"{metrics['is_logratio_abs']:.1e}"
    fields["step_s"] = f"{metrics['time/step_s']:.1f}"
    return fields


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        from .config import build_parser

        build_parser().parse_args(argv)  # prints the help and exits
    _quiet_third_party_logs()
    from .config import parse_args

    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("awpo").setLevel(logging.INFO)
    logging.getLogger("vllm").setLevel(logging.ERROR)

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .judges import JudgeUnavailableError
    from .trainer import Trainer

    with logging_redirect_tqdm():
        try:
            trainer = Trainer(config)
        except (FileNotFoundError, ValueError, RuntimeError) as err:  # bad input: a message, not a traceback
            print(f"python -m awpo.train: error: {err}", file=sys.stderr)
            return 2
        bar = tqdm(total=config.max_steps, initial=trainer.step, desc="AWPO", unit="step", dynamic_ncols=True,
                   disable=config.eval_only)

        def on_step(metrics: dict) -> None:
            bar.update(1)
            bar.set_postfix(progress_fields(metrics))

        try:
            result = trainer.train(on_step=on_step)
        except (FloatingPointError, JudgeUnavailableError) as err:
            # diverged, or the reasoning judge is gone: say so plainly; the checkpoints on disk are intact
            bar.close()
            print(f"python -m awpo.train: error at step {trainer.step + 1}: {err}", file=sys.stderr)
            return 1
        bar.close()
    print("\n".join(summary_lines(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
