"""CI smoke test of benchmarks/: every benchmark runs once at a tiny shape, so the suite cannot rot.

The benchmarks themselves (real shapes, timings) run with `pytest benchmarks/ --benchmark-only` or
`python -m benchmarks.report`; here torch.compile baselines are only traced (backend "eager").
"""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import awpo_kernels
from benchmarks import baselines, memory, report
from benchmarks.cases import OPS, CaseOptions, build_case, build_case_by_name, implementations, make_inputs
from benchmarks.shapes import SMOKE_LM_HEAD, select_shapes, shape_by_name

pytestmark = pytest.mark.slow  # every benchmark once, at the smoke shape

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE = CaseOptions(compile_backend="eager")


def test_every_benchmark_file_runs_once_at_the_smoke_shape():
    env = dict(os.environ, AWPO_BENCH_SHAPES="smoke", AWPO_BENCH_DEVICE="cpu", AWPO_BENCH_COMPILE_BACKEND="eager",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from benchmarks import train_step

    expected = sum(len(implementations(op, "cpu")) for op in OPS) + len(train_step.MODES)  # + test_bench_train_step
    assert re.search(rf"\b{expected} passed\b", done.stdout), done.stdout[-1000:]
    assert "skipped" not in done.stdout and "failed" not in done.stdout


def test_report_writes_a_table_per_op_and_keeps_the_rest_of_the_file(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nhand-written notes\n", encoding="utf-8")
    report.write_section(results, "cpu:smoke", "stale numbers")  # a run replaces its section, never appends
    # The compiled baselines are left out here: the benchmark-file test above already traces them.
    impls = [impl for op in OPS for impl in implementations(op, "cpu") if "compiled" not in impl]
    report.main(["--device", "cpu", "--shapes", "smoke", "--no-memory", "--compile-backend", "eager",
                 "--rounds", "1", "--impls", ",".join(impls), "--output", str(results)])
    text = results.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nhand-written notes\n")
    assert text.count("<!-- benchmarks.report:cpu:smoke begin -->") == 1 and "stale numbers" not in text
    for op in OPS:
        assert f"#### {report.TITLES[op]}" in text
        for impl in set(implementations(op, "cpu")) & set(impls):
            assert re.search(rf"^\| {re.escape(impl)} \| [0-9.]+ \[", text, re.MULTILINE), (op, impl)
    assert "failed" not in text
    assert "time / materialised = " in text  # the CPU target lines, with a measured ratio


def test_write_section_replaces_only_its_own_markers(tmp_path):
    path = tmp_path / "r.md"
    report.write_section(path, "cpu", "one")
    report.write_section(path, "cuda", "gpu numbers")
    report.write_section(path, "cpu", "two")
    text = path.read_text(encoding="utf-8")
    assert "one" not in text and "two" in text and "gpu numbers" in text
    assert text.index("two") < text.index("gpu numbers")


def test_cpu_memory_probe_sees_the_materialised_logits():
    shape = SMOKE_LM_HEAD[0]
    result = memory.measure_cpu_subprocess("fused_linear_policy_loss", "materialised", shape.name,
                                           compile_backend="eager")
    logits_bytes = shape.tokens * shape.vocab * 4
    assert result.method == memory.CPU_METHOD
    assert logits_bytes <= result.extra_bytes < 64 * 2 ** 20, result
    assert result.base_bytes > 0


def test_materialised_baseline_computes_the_same_loss_and_gradients_as_awpo_kernels():
    shape = SMOKE_LM_HEAD[0]
    ours = make_inputs("fused_linear_policy_loss", shape, torch.device("cpu"), seed=3)
    theirs = make_inputs("fused_linear_policy_loss", shape, torch.device("cpu"), seed=3)
    assert (ours.targets == -100).any() and (ours.targets != -100).any()
    loss = awpo_kernels.fused_linear_policy_loss(ours.hidden, ours.weight, ours.targets, ours.advantages,
                                                 loss_type="grpo", beta=0.0, backend="reference").loss
    loss.backward()
    base = baselines.materialised_policy_loss(theirs.hidden, theirs.weight, theirs.targets, theirs.advantages)
    base.backward()
    torch.testing.assert_close(base, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(theirs.hidden.grad, ours.hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(theirs.weight.grad, ours.weight.grad, rtol=1e-4, atol=1e-6)
    assert ours.weight.grad.abs().sum() > 0


def test_materialised_logprobs_and_plain_grpo_match_the_library():
    shape = SMOKE_LM_HEAD[0]
    x = make_inputs("linear_logprobs", shape, torch.device("cpu"), seed=5)
    expected = awpo_kernels.linear_logprobs(x.hidden, x.weight, x.targets, backend="reference").logprobs
    torch.testing.assert_close(baselines.materialised_logprobs(x.hidden, x.weight, x.targets), expected)
    groups = make_inputs("group_advantages", shape_by_name("groups-smoke"), torch.device("cpu"), seed=5)
    grpo = awpo_kernels.group_advantages(groups.outcome, group_size=groups.group_size, estimator="grpo",
                                         backend="reference").advantages
    torch.testing.assert_close(baselines.grpo_group_advantages(groups.outcome, groups.group_size), grpo)


def test_gemm_floor_returns_both_backward_gemms_with_their_shapes():
    shape = SMOKE_LM_HEAD[0]
    case = build_case_by_name("fused_linear_policy_loss", "lm-head-gemms", shape.name, "cpu", SMOKE)
    case.run()
    grad_hidden, grad_weight = case.kept
    assert grad_hidden.shape == (shape.tokens, shape.hidden) and grad_weight.shape == (shape.vocab, shape.hidden)
    assert case.flops == 6 * shape.tokens * shape.hidden * shape.vocab and case.summary() is None
    case.reset()
    assert case.kept is None


def test_cases_reject_bad_names_with_a_clear_error():
    shape = SMOKE_LM_HEAD[0]
    inputs = make_inputs("linear_logprobs", shape, torch.device("cpu"))
    with pytest.raises(ValueError, match="impl must be one of"):
        build_case("linear_logprobs", "liger-typo", shape, inputs)
    with pytest.raises(ValueError, match="op must be one of"):
        build_case("logprobs", "awpo", shape, inputs)
    with pytest.raises(ValueError, match="shape for group_advantages must be a GroupShape"):
        build_case("group_advantages", "awpo", shape, inputs)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_by_name("qwen9")
    with pytest.raises(ValueError, match="kind must be"):
        select_shapes("vocab", "cpu")


def test_default_cpu_shapes_keep_the_real_vocabularies():
    vocabs = {s.vocab for s in select_shapes("lm_head", "cpu", "all")}
    assert vocabs == {151936, 128256}
    [main] = select_shapes("lm_head", "cpu")
    assert (main.tokens, main.hidden, main.vocab, main.dtype) == (2048, 256, 151936, torch.float32)
    # The materialised baseline holds about three fp32 logits tensors: keep one under 2 GiB on a 24 GiB machine.
    assert all(math.prod((s.tokens, s.vocab)) * 4 < 2 ** 31 for s in select_shapes("lm_head", "cpu", "all"))
    assert {s.hidden for s in select_shapes("lm_head", "cuda")} == {2560, 4096}


def test_gpu_table_and_targets_render_from_measured_numbers():
    """The CUDA-only columns and verdicts, from synthetic numbers (the GPU suite runs rarely)."""
    from benchmarks.shapes import GPU_LM_HEAD
    from benchmarks.timing import Failure, Timing

    shape = GPU_LM_HEAD[0]
    flops = 6 * shape.tokens * shape.hidden * shape.vocab

    def timing(seconds):
        return Timing(seconds, seconds, seconds, 10, 1, None)

    gib = 2 ** 30
    result = report.ShapeResult(
        "fused_linear_policy_loss", shape,
        timings={"awpo": timing(flops / 600e12), "awpo-overlap": timing(flops / 650e12),
                 "materialised": timing(flops / 200e12),
                 "liger": Failure("ImportError: no liger"), "lm-head-gemms": timing(flops / 700e12)},
        memories={"awpo": memory.MemoryResult(int(4.5 * gib), 0, memory.CUDA_METHOD),
                  "materialised": memory.MemoryResult(30 * gib, 0, memory.CUDA_METHOD)})
    table = "\n".join(report.render_table(result, torch.device("cuda"), matmul_tflops=800.0))
    assert re.search(r"^\| awpo \| .* \| 600 \| 75% \|$", table, re.MULTILINE), table
    assert re.search(r"^\| lm-head-gemms \| .* \| 700 \| 88% \|$", table, re.MULTILINE), table
    assert "| liger | failed: ImportError: no liger |" in table
    targets = "\n".join(report.render_targets([result], torch.device("cuda")))
    assert "time / LM-head GEMMs = 1.167 (target <= 1.2): met" in targets
    assert "fastest awpo variant (awpo-overlap) / LM-head GEMMs = 1.077 (target <= 1.2): met" in targets
    assert "materialised time / fused time = 3.000 (target >= 2.0): met" in targets
    assert "Liger time / fused time: not measured" in targets
    assert shape.dtype == torch.bfloat16
    gradients = (shape.tokens + shape.vocab) * shape.hidden * 2 / gib
    weight_sum = shape.vocab * shape.hidden * 4 / gib  # the fp32 sum of the bf16 weight's gradient
    workspace = 4.5 - gradients - weight_sum
    label = "workspace (peak extra - gradients - fp32 weight-gradient sum)"
    assert f"{label} = {workspace:.2f} GiB (target <= 1 GiB): " + ("met" if workspace <= 1 else "MISSED") in targets


def test_chunk_size_variants_run_the_library_with_that_chunk_size():
    shape = SMOKE_LM_HEAD[0]
    assert implementations("linear_logprobs", "cpu", chunk_sizes=(7,))[1] == "awpo-chunk7"
    inputs = make_inputs("fused_linear_policy_loss", shape, torch.device("cpu"), seed=2)
    summaries = {}
    for impl in ("materialised", "awpo-chunk7"):
        case = build_case("fused_linear_policy_loss", impl, shape, inputs, SMOKE)
        case.run()
        summaries[impl] = case.summary()
        case.reset()
    for key, value in summaries["materialised"].items():
        assert summaries["awpo-chunk7"][key] == pytest.approx(value, rel=1e-4), key
    with pytest.raises(ValueError, match="awpo-chunkROWS"):
        build_case("fused_linear_policy_loss", "awpo-chunk0", shape, inputs)


def test_profile_reports_every_phase_the_floor_and_the_sweep(tmp_path):
    from benchmarks import profile

    markdown, numbers = tmp_path / "profile.md", tmp_path / "profile.json"
    status = profile.main(["--device", "cpu", "--shape", "smoke", "--calls", "1", "--sweep", "--chunk-sizes", "16",
                           "--output", str(markdown), "--json", str(numbers)])
    assert status == 0  # on CPU the missing mixed-precision GEMMs are expected, not a failure
    text = markdown.read_text(encoding="utf-8")
    for label in [*profile.PHASE_LABELS.values(), profile.OTHER, "bare LM-head GEMMs (floor)", "chunk 16"]:
        assert label in text, label
    data = __import__("json").loads(numbers.read_text(encoding="utf-8"))
    assert data["fused_ms"] > 0 and data["floor_ms"] > 0 and data["failed"] == []
    assert all(data["phases_ms"][profile.PHASE_LABELS[name]] > 0 for name in profile.PHASE_LABELS)
    assert set(data["sweep_ms"]) == {"default", "chunk 16"}  # CUDA-only switches are not timed on CPU


def test_sweep_lists_every_tuning_switch_and_restores_the_environment(monkeypatch):
    from benchmarks import profile

    labels = [label for label, _, _ in profile.sweep_variants([1024, 1664])]
    assert labels[:2] == ["default", "overlap"] and "chunk 1664 + overlap" in labels
    assert sum(label.startswith("epilogue") for label in labels) == len(profile.EPILOGUE_SWEEP)
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_BLOCK_V", "512")
    monkeypatch.delenv("AWPO_KERNELS_OVERLAP", raising=False)
    with profile.environment(AWPO_KERNELS_OVERLAP=1, AWPO_KERNELS_EPILOGUE_BLOCK_V=None):
        assert os.environ["AWPO_KERNELS_OVERLAP"] == "1" and "AWPO_KERNELS_EPILOGUE_BLOCK_V" not in os.environ
    assert os.environ["AWPO_KERNELS_EPILOGUE_BLOCK_V"] == "512" and "AWPO_KERNELS_OVERLAP" not in os.environ


def test_overlap_and_torch_rows_are_listed_on_cuda_only():
    assert {"awpo-overlap", "awpo-torch"} <= set(implementations("fused_linear_policy_loss", "cuda"))
    assert not {"awpo-overlap", "awpo-torch"} & set(implementations("fused_linear_policy_loss", "cpu"))


def test_report_leaves_out_excluded_rows_and_writes_the_named_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    report.main(["--device", "cpu", "--shapes", "smoke", "--ops", "fused_linear_policy_loss", "--no-memory",
                 "--rounds", "1", "--compile-backend", "eager", "--chunk-sizes", "16",
                 "--exclude-impls", "materialised-compiled,liger,not-a-row", "--section", "cpu:stage-a",
                 "--output", str(results)])
    text = results.read_text(encoding="utf-8")
    assert "<!-- benchmarks.report:cpu:stage-a begin -->" in text
    assert "| awpo-chunk16 |" in text and "| materialised |" in text and "materialised-compiled" not in text


def test_gpu_suite_script_parses():
    done = subprocess.run(["bash", "-n", str(REPO_ROOT / "benchmarks" / "gpu_suite.sh")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_attention_benchmark_times_every_layout_on_cpu(tmp_path):
    from benchmarks import attention as attention_bench

    output = tmp_path / "attention.md"
    assert attention_bench.main(["--device", "cpu", "--tokens", "256", "--calls", "1", "--output", str(output)]) == 0
    text = output.read_text(encoding="utf-8")
    for layout in ("dense", "flex", "separate"):
        assert re.search(rf"^\| {layout} \| \d+ \| [0-9.]+ \|", text, re.MULTILINE), text


def test_train_step_benchmark_reports_phases_ratios_and_writes_its_section(tmp_path):
    import json

    from benchmarks import train_step

    results, numbers = tmp_path / "RESULTS.md", tmp_path / "train_step.json"
    results.write_text("# Results\n\nhand-written notes\n", encoding="utf-8")
    status = train_step.main(["--model", "tiny", "--prompts", "3", "--group", "3", "--prompt-tokens", "21",
                              "--response-tokens", "7", "--micro-batch", "6", "--is-correction", "--rounds", "1",
                              "--write", "--results", str(results), "--json", str(numbers)])
    assert status == 0
    text = results.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nhand-written notes\n")
    assert text.count(f"<!-- benchmarks.report:{train_step.SECTION} begin -->") == 1
    for mode in train_step.MODES:
        assert re.search(rf"^\| {mode} \| \d+ \[\d+-\d+\] \| [0-9.]+x \|", text, re.MULTILINE), text
    assert "CPU: " in text and "torch " in text
    assert "dense-mask update / grouped update = " in text and "update / its FLOPs at the bf16 GEMM rate = " in text
    data = json.loads(numbers.read_text(encoding="utf-8"))
    assert len(data["modes"]) == 2 and data["rates_flops"]["bfloat16"] > 0 and data["rates_flops"]["float32"] > 0
    assert data["modes"]["grouped"]["loss"] == pytest.approx(data["modes"]["dense"]["loss"], rel=1e-3, abs=1e-5)
    assert 0 < data["flops"]["allowed_pairs"] <= data["flops"]["computed_pairs"]
    phases = data["phases_ms"]["grouped"]
    # --is-correction with one iteration: the weights come from the training forward (one more LM-head pass inside
    # awpo::forward), not from an old-log-prob pass in awpo::prepare
    assert phases["awpo::prepare"]["LM head + loss"] == 0 and phases["awpo::forward"]["LM head + loss"] > 0
    assert data["flops"]["passes"] == {"no-grad forward": 0, "trained (forward + backward)": 1}
    assert phases["awpo::forward"]["attention"] > 0 and phases["awpo::backward"]["attention"] > 0
    assert phases["awpo::forward"]["linear GEMMs"] > 0 and phases["awpo::optimizer"]["other"] > 0


def test_train_step_flop_count_follows_the_layer_shapes_and_the_mask():
    from benchmarks import train_step

    setup = train_step.build_setup(train_step.parse_args(["--model", "tiny", "--prompts", "2", "--group", "2",
                                                          "--prompt-tokens", "5", "--response-tokens", "3",
                                                          "--prompt-spread", "0", "--response-spread", "0"]))
    flops = train_step.count_flops(setup)
    config = setup.model.config
    assert flops.tokens == [2 * (5 + 2 * 3)]  # one micro-batch: each prompt once
    per_layer = (2 * config.hidden_size * config.num_attention_heads * config.head_dim  # q, o
                 + 2 * config.hidden_size * config.num_key_value_heads * config.head_dim  # k, v
                 + 3 * config.hidden_size * config.intermediate_size)  # gate, up, down
    assert flops.linear == 3 * 2 * per_layer * config.num_hidden_layers * 22  # forward + 2 x backward
    pairs = 2 * (5 * 6 // 2 + 2 * (3 * 5 + 3 * 4 // 2))  # per group: prompt causal, responses see prompt + own
    assert flops.allowed_pairs == pairs * config.num_hidden_layers
    assert flops.attention == 3 * 4 * config.num_attention_heads * config.head_dim * flops.allowed_pairs
    assert flops.lm_head == 6 * 12 * config.hidden_size * config.vocab_size  # 12 loss tokens, fused loss only
