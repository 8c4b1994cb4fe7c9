"""Every Triton kernel compiles to Hopper (sm_90) machine code, without a GPU.

The interpreter runs the kernels' semantics on CPU but never lowers them: a type the compiler rejects,
a layout it cannot lower or a missing barrier would only show on a GPU. `triton.compile` with an
explicit target runs the real pipeline here (Triton IR -> LLVM -> PTX -> ptxas cubin, with the ptxas
shipped in the triton wheel). The variants cover every value of every constexpr flag at least once.
The epilogue builds must not spill registers to local memory (read with the wheel's cuobjdump). This
proves the kernels build; their numbers are checked by the interpreter and CUDA suites.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    pytest.skip("compiles real kernels: run without TRITON_INTERPRET", allow_module_level=True)

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from awpo_kernels import _advantages_triton  # noqa: E402
from awpo_kernels import _epilogue_triton as triton_kernels  # noqa: E402
from awpo_kernels import _kernel_codes as codes  # noqa: E402
from benchmarks.profile import EPILOGUE_SWEEP  # noqa: E402

pytestmark = pytest.mark.slow  # compiles each kernel for sm_90 with ptxas

HOPPER = GPUTarget("cuda", 90, 32)
INT_ARGS = {"z_stride", "dz_stride", "row_start", "n_rows", "vocab", "n_tokens", "group_size", "correction"}
ID_POINTERS = {"targets_ptr": "*i64", "seq_ids_ptr": "*i64", "mask_ptr": "*i8", "clipped_ptr": "*i32"}


def compile_for_hopper(kernel, constexprs: dict, num_warps: int, pointers: dict | None = None):
    """Compile `kernel` for sm_90. Arguments are typed by name: ids and masks as their launchers pass
    them, other pointers fp32 unless `pointers` says otherwise, strides/counts i32, other scalars fp32."""
    pointers = {**ID_POINTERS, **(pointers or {})}
    names = kernel.arg_names
    assert set(constexprs) == {p.name for p in kernel.params if p.is_constexpr}, "constexprs out of date"
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*fp32")
        else:
            signature[name] = "i32" if name in INT_ARGS else "fp32"
    source = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=HOPPER, options={"num_warps": num_warps})


def resource_usage(compiled) -> dict:
    """Registers, stack and local (spill) bytes of the cubin, read by the wheel's own cuobjdump."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        text = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True,
                              check=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text)}


# ----------------------------------------------------------------------------- LM-head epilogue

NO_KL, GIVEN, FORWARD_ONLY = codes.KL_NONE.value, codes.COEFFICIENTS_GIVEN.value, codes.COEFFICIENTS_NONE.value


def epilogue_flags(coefficients=codes.COEFFICIENTS_LOSS.value, stats_given=False, entropy=True, sequence_level=False,
                   has_old=True, has_delta=False, kl_type=None, is_weights=False, narrow_dz=False):
    """The epilogue's constexprs; `kl_type` is a LossOptions.kl_type value (None: no KL term)."""
    return dict(BLOCK_ROWS=1, BLOCK_V=4096, STATS_GIVEN=stats_given, SAVE_LSE=not stats_given,
                NEED_ENTROPY=entropy, ENTROPY_GRAD=entropy and coefficients != FORWARD_ONLY,
                COEFFICIENTS=coefficients, SEQUENCE_LEVEL=sequence_level, HAS_OLD=has_old, HAS_DELTA=has_delta,
                KL_TYPE=NO_KL if kl_type is None else codes.KL_TYPE_CODES[kl_type], HAS_IS_WEIGHTS=is_weights,
                NARROW_DZ=narrow_dz)


EPILOGUE_VARIANTS = [
    epilogue_flags(coefficients=FORWARD_ONLY, has_old=False),                        # linear_logprobs forward
    epilogue_flags(coefficients=FORWARD_ONLY, entropy=False, has_old=False),
    epilogue_flags(coefficients=GIVEN, stats_given=True, has_old=False, narrow_dz=True),  # its backward, bf16
    epilogue_flags(coefficients=GIVEN, stats_given=True, entropy=False, has_old=False),
    epilogue_flags(narrow_dz=True, kl_type="k3", has_delta=True, is_weights=True),       # policy loss, bf16
    epilogue_flags(kl_type="k1", has_old=False, entropy=False),
    epilogue_flags(kl_type="k2", sequence_level=True),
    epilogue_flags(sequence_level=True, stats_given=True, narrow_dz=True),
]


@pytest.mark.parametrize("flags", EPILOGUE_VARIANTS, ids=lambda f: "-".join(f"{k}={int(v)}" for k, v in f.items()
                                                                            if k not in ("BLOCK_ROWS", "BLOCK_V")))
def test_lm_head_epilogue_compiles_for_hopper(flags):
    dz = "*bf16" if flags["NARROW_DZ"] else "*fp32"
    compiled = compile_for_hopper(triton_kernels._lm_head_epilogue_kernel, flags, num_warps=8,
                                  pointers={"dz_ptr": dz})
    assert ".target sm_90" in compiled.asm["ptx"]
    usage = resource_usage(compiled)
    # 8 warps x 32 threads: 255 registers would still launch, but spills to local memory would slow the
    # one pass over every logit that this kernel is.
    assert 0 < usage["REG"] <= 128 and usage["STACK"] == 0 and usage["LOCAL"] == 0, usage


def test_narrow_dlogits_wait_for_every_warp_before_storing():
    """bf16 d(logits) overwrite fp32 logits that other warps of the program load: the kernel must put a
    barrier between each block's loads and stores (one more bar.sync than the fp32 build)."""
    kernel = triton_kernels._lm_head_epilogue_kernel
    flags = epilogue_flags(coefficients=GIVEN, stats_given=True, entropy=False, has_old=False)
    wide = compile_for_hopper(kernel, flags, num_warps=8, pointers={"dz_ptr": "*bf16"}).asm["ptx"]
    narrow = compile_for_hopper(kernel, dict(flags, NARROW_DZ=True), num_warps=8,
                                pointers={"dz_ptr": "*bf16"}).asm["ptx"]
    assert narrow.count("bar.sync") == wide.count("bar.sync") + 1


@pytest.mark.parametrize("block_rows, block_v, warps", EPILOGUE_SWEEP)
def test_epilogue_launch_configurations_of_the_gpu_sweep_compile_for_hopper(block_rows, block_v, warps):
    """`python -m benchmarks.profile --sweep` tries these through the AWPO_KERNELS_EPILOGUE_* variables:
    each must build (spills are allowed here: the sweep measures whether a configuration pays)."""
    flags = dict(epilogue_flags(narrow_dz=True, kl_type="k3"), BLOCK_ROWS=block_rows, BLOCK_V=block_v)
    compiled = compile_for_hopper(triton_kernels._lm_head_epilogue_kernel, flags, num_warps=warps,
                                  pointers={"dz_ptr": "*bf16"})
    assert ".target sm_90" in compiled.asm["ptx"] and resource_usage(compiled)["REG"] > 0


@pytest.mark.parametrize("level, has_old, has_delta, kl_type, is_weights",
                         [(False, True, True, "k3", True), (True, False, False, "k1", False),
                          (False, False, False, "k2", False), (False, True, False, None, False)])
def test_policy_coefficients_compile_for_hopper(level, has_old, has_delta, kl_type, is_weights):
    kl_code = NO_KL if kl_type is None else codes.KL_TYPE_CODES[kl_type]
    flags = dict(BLOCK=1024, SEQUENCE_LEVEL=level, HAS_OLD=has_old, HAS_DELTA=has_delta, KL_TYPE=kl_code,
                 HAS_IS_WEIGHTS=is_weights)
    compiled = compile_for_hopper(triton_kernels._policy_coefficients_kernel, flags, num_warps=4)
    assert compiled.asm["cubin"]


# ----------------------------------------------------------------------------- group advantages

ADVANTAGE_VARIANTS = [
    dict(ESTIMATOR=codes.ESTIMATOR_CODES[estimator], GATE=codes.GATE_CODES[gate], WEIGHT=codes.WEIGHT_CODES[weight],
         CLIP_SIGN=codes.CLIP_CODES[clip], SCALE_BY_STD=codes.SCALE_CODES[scale], HAS_REASONING=reasoning)
    for estimator, gate, weight, clip, scale, reasoning in [
        ("awpo", "soft", "linear", "sign", "group", True), ("awpo", "hard", "bernoulli", "none", "none", True),
        ("awpo", "ratio", "none", "sign", "group", True), ("awpo_mixed", "soft", "bernoulli", "none", "group", True),
        ("awpo_mixed", "ratio", "linear", "none", "none", True), ("grpo", "soft", "none", "none", "group", False),
        ("awpo", "ratio", "linear", "sign", "group", False),
        # gate "none"; reward_sum with and without reasoning, both scales; gdpo likewise
        ("awpo", "none", "bernoulli", "sign", "group", True), ("awpo_mixed", "none", "none", "none", "group", True),
        ("reward_sum", "soft", "linear", "none", "group", True), ("reward_sum", "none", "bernoulli", "none", "none", True),
        ("reward_sum", "hard", "none", "none", "group", False), ("gdpo", "none", "linear", "none", "group", True),
        ("gdpo", "ratio", "bernoulli", "none", "none", True), ("gdpo", "soft", "none", "none", "group", False)]
]


@pytest.mark.parametrize("block_g", [8, 512])
@pytest.mark.parametrize("flags", ADVANTAGE_VARIANTS, ids=lambda f: "-".join(f"{k}={int(v)}" for k, v in f.items()))
@pytest.mark.parametrize("outcome", ["*fp32", "*bf16"])
def test_group_advantages_compile_for_hopper(flags, block_g, outcome):
    compiled = compile_for_hopper(_advantages_triton._group_advantages_kernel, dict(flags, BLOCK_G=block_g),
                                  num_warps=1 if block_g <= 256 else 4,
                                  pointers={"outcome_ptr": outcome, "reasoning_ptr": outcome})
    assert compiled.asm["cubin"]


def test_every_constexpr_value_is_compiled_somewhere():
    """The variant lists above reach every code path the launchers can select."""
    coefficients = {codes.COEFFICIENTS_NONE.value, codes.COEFFICIENTS_GIVEN.value, codes.COEFFICIENTS_LOSS.value}
    kl_types = {NO_KL, *codes.KL_TYPE_CODES.values()}
    for flag, values in {"COEFFICIENTS": coefficients, "KL_TYPE": kl_types, "NARROW_DZ": {False, True},
                         "STATS_GIVEN": {False, True}, "SEQUENCE_LEVEL": {False, True}, "HAS_OLD": {False, True},
                         "HAS_DELTA": {False, True}, "HAS_IS_WEIGHTS": {False, True},
                         "NEED_ENTROPY": {False, True}}.items():
        assert {v[flag] for v in EPILOGUE_VARIANTS} == values, flag
    advantage_codes = {"ESTIMATOR": set(codes.ESTIMATOR_CODES.values()), "GATE": set(codes.GATE_CODES.values()),
                       "WEIGHT": set(codes.WEIGHT_CODES.values()), "CLIP_SIGN": set(codes.CLIP_CODES.values()),
                       "SCALE_BY_STD": set(codes.SCALE_CODES.values()), "HAS_REASONING": {False, True}}
    for flag, values in advantage_codes.items():
        assert {v[flag] for v in ADVANTAGE_VARIANTS} == values, flag
