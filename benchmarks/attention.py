"""`python -m benchmarks.attention`: the trainer's shared-prompt forward + backward at a long packed length,
through the FlexAttention block mask ('flex', the CUDA default) against the dense [1, 1, T, T] mask
('dense', the CPU default) and against packing every sequence whole ('separate': each prompt G times,
the model's own attention). Time (median) and peak extra memory of one forward + backward of the last
hidden state, on a small random Llama built offline (needs transformers, no download).

On CPU, FlexAttention has no backward: there the rows are forward only (the CI smoke run).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from awpo import attention
from awpo.policy_update import RolloutBatch, last_hidden_states, pack


def tiny_llama(device, hidden=256, layers=2, heads=4, kv_heads=2, head_dim=64, vocab=1024, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                         max_position_embeddings=1 << 16, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(device)


def grouped_batch(tokens: int, prompt: int, response: int, group: int, vocab: int, seed=0) -> RolloutBatch:
    """Groups of one `prompt`-token prompt and `group` responses of `response` tokens, ~`tokens` packed."""
    generator = torch.Generator().manual_seed(seed)
    groups = max(1, tokens // (prompt + group * response))
    prompts, responses = [], []
    for _ in range(groups):
        shared = torch.randint(3, vocab, (prompt,), generator=generator).tolist()
        for _ in range(group):
            prompts.append(shared)
            responses.append(torch.randint(3, vocab, (response,), generator=generator).tolist())
    n = len(responses)
    return RolloutBatch(prompts, responses, [[1] * response] * n, [[-1.0] * response] * n, torch.zeros(n),
                        torch.zeros(n), torch.zeros(n))


def run_once(model, micros, backward: bool) -> None:
    with torch.set_grad_enabled(backward):
        total = sum(last_hidden_states(model, micro, bf16_autocast=True).float().square().mean() for micro in micros)
    if backward:
        total.backward()
        model.zero_grad(set_to_none=True)


def measure(model, micros, device, backward: bool, calls: int) -> tuple[float, float | None]:
    """(median seconds, peak extra bytes on CUDA or None)."""
    run_once(model, micros, backward)  # warm-up: compiles FlexAttention on CUDA
    samples = []
    for _ in range(calls):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run_once(model, micros, backward)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    peak = None
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_once(model, micros, backward)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return statistics.median(samples), peak


def layouts(batch, device) -> dict:
    every = list(range(len(batch)))
    rows = {"dense": [pack(batch, every, device, attention_mode="dense")]}
    if attention.flex_available():
        rows["flex"] = [pack(batch, every, device, attention_mode="flex")]
    rows["separate"] = [pack(batch, every, device, share_prompts=False)]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=None, help="packed length (default 16384 CUDA, 1024 CPU)")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (default tokens / 8)")
    parser.add_argument("--response", type=int, default=None, help="response tokens (default tokens / 32)")
    parser.add_argument("--group", type=int, default=8, help="responses per prompt")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--output", type=Path, help="write the table (markdown) here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    tokens = args.tokens or (16384 if device.type == "cuda" else 1024)
    prompt, response = args.prompt or tokens // 8, args.response or tokens // 32
    backward = device.type == "cuda"
    model = tiny_llama(device)
    batch = grouped_batch(tokens, prompt, response, args.group, model.config.vocab_size)
    lines = [f"Shared-prompt attention, {len(batch)} sequences ({args.group} per {prompt}-token prompt, "
             f"{response}-token responses), bf16 autocast, {'forward + backward' if backward else 'forward only'}, "
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}", "",
             "| layout | packed tokens | ms (median) | peak extra MiB |", "|---|---|---|---|"]
    print(lines[0], flush=True)
    for name, micros in layouts(batch, device).items():
        length = sum(m.input_ids.shape[1] for m in micros)
        try:
            seconds, peak = measure(model, micros, device, backward, args.calls)
        except Exception as exc:  # one layout failing (e.g. out of memory) must not lose the others
            lines.append(f"| {name} | {length} | failed: {type(exc).__name__}: {str(exc)[:100]} | – |")
        else:
            peak_text = "–" if peak is None else f"{peak / 2**20:.0f}"
            lines.append(f"| {name} | {length} | {seconds * 1e3:.1f} | {peak_text} |")
        print(lines[-1], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.output:
        args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
