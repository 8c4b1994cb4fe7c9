"""How the chunk loop cuts the tokens (`_runtime.chunk_bounds`) and the epilogue's launch overrides."""
import itertools
import random

import pytest

from awpo_kernels._runtime import chunk_bounds


def check_bounds(num_rows, max_rows, align):
    bounds = chunk_bounds(num_rows, max_rows, align)
    assert bounds[0][0] == 0 and bounds[-1][1] == num_rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])), bounds  # contiguous, no gap or overlap
    sizes = [stop - start for start, stop in bounds]
    assert all(0 < size <= max_rows for size in sizes), (sizes, max_rows)
    unit = align if max_rows >= align else 1
    assert all(size % unit == 0 for size in sizes[:-1]), sizes  # only the last may end off a block
    assert max(sizes) - min(sizes) <= unit, sizes  # balanced: no ragged tail
    blocks = -(-num_rows // unit)
    assert len(bounds) == -(-blocks // max(1, max_rows // unit)), (sizes, max_rows)  # as few as the cap allows
    return sizes


def test_qwen3_4b_tokens_split_into_balanced_128_row_chunks():
    # the GPU default at V=151936: 1760 rows at most -> ten chunks of 1536 or 1664 rows, no 544-row tail
    assert check_bounds(16384, 1760, 128) == [1536] * 2 + [1664] * 8
    assert check_bounds(2611, 1500, 128) == [1280, 1331]  # the short end falls on a larger chunk


@pytest.mark.parametrize("align", [1, 16, 128])
def test_bounds_are_contiguous_capped_aligned_and_balanced(align):
    rng = random.Random(align)
    cases = [(rng.randint(1, 5000), rng.randint(1, 3000)) for _ in range(300)]
    cases += list(itertools.product([1, 2, 127, 128, 129, 1000], [1, 7, 128, 129, 256, 2000]))
    for num_rows, max_rows in cases:
        check_bounds(num_rows, max_rows, align)


def test_small_caps_still_balance_row_by_row():
    assert check_bounds(21, 10, 128) == [7, 7, 7]
    assert check_bounds(21, 4, 16) == [3, 3, 3, 4, 4, 4]
    assert chunk_bounds(0, 10, 128) == []


# ----------------------------------------------------------------------------- epilogue launch overrides

triton_kernels = pytest.importorskip("awpo_kernels._epilogue_triton")


def test_epilogue_block_sizes_follow_the_environment(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for variable in triton_kernels.EPILOGUE_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    assert triton_kernels._block_sizes(151936) == (1, 4096, 8)
    assert triton_kernels._block_sizes(1001) == (1, 1024, 8)
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_BLOCK_ROWS", "2")
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_BLOCK_V", "8192")
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_NUM_WARPS", "16")
    assert triton_kernels._block_sizes(151936) == (2, 8192, 16)


@pytest.mark.parametrize("variable, value", [("AWPO_KERNELS_EPILOGUE_BLOCK_V", "3000"),
                                             ("AWPO_KERNELS_EPILOGUE_NUM_WARPS", "64"),
                                             ("AWPO_KERNELS_EPILOGUE_BLOCK_ROWS", "two"),
                                             ("AWPO_KERNELS_EPILOGUE_BLOCK_V", "0")])
def test_bad_epilogue_override_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        triton_kernels._block_sizes(151936)


# ----------------------------------------------------------------------------- the two-stream loop

class _MockedStream:
    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass


class _MockedEvent:
    def record(self, stream=None):
        pass


def test_overlapped_loop_alternates_two_workspaces_and_matches_the_serial_loop_with_mocked_streams(monkeypatch):
    """The chunk bookkeeping of AWPO_KERNELS_OVERLAP=1 (which workspace each chunk uses, every chunk's
    backward run once, in order), on CPU with the CUDA stream API mocked: the numbers must be the serial
    loop's. The concurrency itself is checked on a GPU (tests/kernels/test_cuda.py)."""
    import contextlib

    import torch

    import awpo_kernels as ak
    from awpo_kernels import _chunked

    g = torch.Generator().manual_seed(9)
    hidden, weight = torch.randn(45, 11, generator=g), torch.randn(301, 11, generator=g)
    targets = torch.randint(0, 301, (45,), generator=g)
    advantages = torch.randn(45, generator=g)
    seq_ids = torch.arange(45)

    def run():
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = ak.fused_linear_policy_loss(h, w, targets, advantages, seq_ids=seq_ids, chunk_size=8, entropy_coef=0.1,
                                          backend="torch")
        out.loss.backward()
        return out.loss.detach(), h.grad, w.grad

    serial = run()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _MockedStream())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _MockedStream())
    monkeypatch.setattr(torch.cuda, "Event", _MockedEvent)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(_chunked, "_overlap_chunks", lambda device, write_grad, bounds: write_grad and len(bounds) > 1)
    used = []
    forward = _chunked._forward
    monkeypatch.setattr(_chunked, "_forward", lambda gemms, epilogue, chunk, buffers, start, stop: (
        used.append(buffers.data_ptr()), forward(gemms, epilogue, chunk, buffers, start, stop))[1])
    overlapped = run()
    assert len(used) == 6 and len(set(used)) == 2 and used[0::2] == [used[0]] * 3 and used[1] != used[0]
    for a, b in zip(overlapped, serial):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
