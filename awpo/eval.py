"""``python -m awpo.eval``: evaluate a local model on BFCL with BFCL's official checkers.

    python -m awpo.eval --model runs/awpo/final --categories default --limit 20 --output runs/bfcl
    python -m awpo.eval --compare runs/bfcl-base/bfcl_results.json runs/bfcl/bfcl_results.json

Generation uses the model's chat template and the Hermes ``<tool_call>`` format that BFCL's Qwen-FC
handler parses, greedy, with vLLM (or transformers with ``--engine hf``). Scoring runs BFCL's
``ast_checker`` / irrelevance check / ``multi_turn_checker`` in a separate venv (created on first use,
see ``awpo.bfcl.venv``). ``--scripted oracle|silent`` swaps the model for a scripted one: a quick
check that the set-up scores a perfect and an empty model as expected.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys

from awpo.bfcl.data import ALL_CATEGORIES, CATEGORY_GROUPS, resolve_categories
from awpo.bfcl.evaluate import evaluate_generate_fn
from awpo.bfcl.generate import engine_generate_fn
from awpo.bfcl.report import comparison_table, load_results, results_table, write_results

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 512
DEFAULT_MAX_MODEL_LEN = 8192


def evaluate(model_path: str | None, categories=None, limit: int | None = None, *, output_dir: str | None = None,
             engine: str = "auto", rollout_engine=None, tokenizer=None, max_tokens: int = DEFAULT_MAX_TOKENS,
             max_model_len: int | None = None, batch_size: int = 32, progress: bool = False,
             checker=None, generate_fn=None) -> dict:
    """Evaluate a model on BFCL; return the results dict (and write it to ``output_dir`` if given).

    ``model_path``: a local model directory (None: the default SmolLM2 model). To evaluate the policy
    inside a training run without loading it twice, pass the trainer's ``rollout_engine`` and
    ``tokenizer`` (weights already synced); ``generate_fn`` replaces the model entirely (tests).
    The dict has ``model, date, engine, categories, limit, bfcl_eval, results, overall, entries``.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    categories = resolve_categories(categories)
    if generate_fn is None:
        from awpo.models import resolve_model_path

        model_path = resolve_model_path(model_path)
        if rollout_engine is None:
            rollout_engine, tokenizer, max_model_len, engine = _build_engine(engine, model_path, max_model_len)
        elif tokenizer is None:
            raise ValueError("tokenizer is required with rollout_engine")
        generate_fn = engine_generate_fn(rollout_engine, tokenizer, max_tokens=max_tokens, max_model_len=max_model_len)
    result = {"model": model_path, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "engine": engine, "max_tokens": max_tokens}
    result.update(evaluate_generate_fn(generate_fn, categories, limit=limit, checker=checker,
                                       batch_size=batch_size, progress=progress))
    if output_dir is not None:
        result["files"] = write_results(result, output_dir)
    return result


def _build_engine(kind: str, model_path: str, max_model_len: int | None):
    from transformers import AutoConfig

    from awpo.rollout import make_engine, vllm_available

    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    if max_model_len is None:
        context = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
        max_model_len = min(context or DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_MODEL_LEN)
    if kind == "vllm":
        engine = make_engine("vllm", model_path, max_model_len=max_model_len)
        return engine, engine.tokenizer, max_model_len, kind
    if kind == "hf":
        from awpo.models import load_policy

        model, tokenizer = load_policy(model_path)
        return make_engine("hf", model_path, model=model, tokenizer=tokenizer), tokenizer, max_model_len, kind
    raise ValueError(f"engine must be 'auto', 'vllm' or 'hf', got {kind!r}")


def _scripted_generate_fn(name: str, categories: list[str], limit: int | None):
    from awpo.bfcl.checker import BfclChecker
    from awpo.bfcl.data import is_multi_turn
    from awpo.bfcl.scripted import oracle_model, silent_model

    if name == "silent":
        return silent_model(), None
    checker = BfclChecker().start()
    entries, calls = [], []
    for category in categories:
        entries += checker.load_entries(category, limit=limit)
        if is_multi_turn(category):
            calls += checker.ground_truth_calls(category, limit=limit)
    return oracle_model(entries, calls), checker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m awpo.eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="local model directory (base model or awpo.train checkpoint); "
                             "default: SmolLM2-135M-Instruct")
    parser.add_argument("--categories", nargs="+", default=["default"],
                        help=f"categories or groups ({', '.join(CATEGORY_GROUPS)}); known: {', '.join(ALL_CATEGORIES)}")
    parser.add_argument("--limit", type=int, default=None, help="first N entries of each category (default: all)")
    parser.add_argument("--output", default=None, help="directory for bfcl_results.json and bfcl_results.md")
    parser.add_argument("--compare", nargs="+", metavar="RESULTS_JSON", default=None,
                        help="print two runs side by side: OTHER.json (vs this run), or A.json B.json (no run)")
    parser.add_argument("--engine", choices=["auto", "vllm", "hf"], default="auto")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="per model call")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="context length (default: the model's, <= 8192)")
    parser.add_argument("--batch-size", type=int, default=32, help="single-turn prompts per engine call")
    parser.add_argument("--scripted", choices=["oracle", "silent"], default=None,
                        help="score a scripted model instead "
                             "(pipeline check: oracle ~100%%, silent 0%% but irrelevance)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"--limit must be >= 1, got {args.limit}")
    if args.compare and len(args.compare) > 2:
        raise SystemExit("--compare takes one results file (compared with this run) or two")
    if args.compare and len(args.compare) == 2:
        print(comparison_table(load_results(args.compare[0]), load_results(args.compare[1])))
        return 0
    baseline = load_results(args.compare[0]) if args.compare else None  # fail early on a bad path
    try:
        categories = resolve_categories(args.categories)
    except ValueError as exc:
        raise SystemExit(f"--{exc}") from None
    generate_fn, checker, model = None, None, args.model
    if args.scripted:
        generate_fn, checker = _scripted_generate_fn(args.scripted, categories, args.limit)
        model = f"scripted:{args.scripted}"
    try:
        result = evaluate(model, categories, args.limit, output_dir=args.output, engine=args.engine,
                          max_tokens=args.max_tokens, max_model_len=args.max_model_len,
                          batch_size=args.batch_size, progress=True, checker=checker, generate_fn=generate_fn)
    finally:
        if checker is not None:
            checker.close()
    print(results_table(result))
    if "files" in result:
        print(f"written: {result['files']['markdown']} and {result['files']['json']}")
    if baseline is not None:
        print(comparison_table(baseline, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
