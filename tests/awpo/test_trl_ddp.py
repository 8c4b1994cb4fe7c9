"""AWPOTrainer under DDP: `torchrun --nproc_per_node 2` (gloo on CPU) against one process on the same batch.

This file is also the worker that torchrun starts: `python -m torch.distributed.run --nproc_per_node 2
test_trl_ddp.py MODEL OUT PER_DEVICE_BATCH` trains two steps and writes each rank's final parameters to OUT.
With `ScriptedRollout` (test_trl_support.py) the completions depend only on their place in the global batch,
so the two-process run and a one-process run with twice the per-device batch see the same global batch: their
parameters must agree (DDP averages the two ranks' gradients; TRL's `dapo` normaliser counts every rank's
tokens), and the two ranks must agree exactly with each other (the gradient all-reduce really ran).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # spawns two processes that each import torch, transformers, TRL

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def train_and_save(model_dir: str, out_dir: str, per_device_batch: int) -> None:
    """Two AWPO steps on 2 prompts x 4 completions per step; rank r writes `rank{r}.pt`.

    Plain SGD: Adam's first steps are nearly sign(gradient), which turns a last-bit difference in the order a
    tiny gradient is summed into a full learning-rate step on that weight.
    """
    sys.path.insert(0, str(HERE))
    from test_trl_support import ScriptedRollout, cpu_args, tiny_dataset

    from awpo.integrations.trl import AWPOTrainer

    dataset = tiny_dataset(4)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = cpu_args(Path(out_dir) / "run", per_device_train_batch_size=per_device_batch, clip_shrink=0.5,
                    ddp_backend="gloo" if distributed else None, optim="sgd", learning_rate=0.1)
    trainer = AWPOTrainer(model=model_dir, args=args, train_dataset=dataset, rollout_func=ScriptedRollout(dataset))
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
    torch.save({"params": state, "world_size": trainer.accelerator.num_processes,
                "loss": [log["loss"] for log in trainer.state.log_history if "loss" in log]},
               Path(out_dir) / f"rank{trainer.accelerator.process_index}.pt")


def run(command: list[str], env: dict, timeout: float = 300) -> None:
    """Run a command in its own process group; on a timeout the whole group (torchrun's workers) is killed."""
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(command)}\n{output[-5000:]}") from None
    assert process.returncode == 0, output[-8000:]


def test_two_ddp_processes_end_with_identical_parameters_equal_to_one_process_scripted_rollouts(
        tiny_model_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__)), tiny_model_dir, str(ddp_dir), "4"], env)

    single_dir = tmp_path / "single"
    single_dir.mkdir()
    train_and_save(tiny_model_dir, str(single_dir), 8)  # in this process: trl is imported already

    rank0, rank1 = (torch.load(ddp_dir / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(single_dir / "rank0.pt")
    assert (rank0["world_size"], rank1["world_size"], single["world_size"]) == (2, 2, 1)
    for name, value in single["params"].items():
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
        torch.testing.assert_close(rank0["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    from transformers import AutoModelForCausalLM
    start = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    moved = max((single["params"][n] - p.detach()).abs().max().item() for n, p in start.items())
    assert moved > 1e-4  # the runs trained
    assert rank0["loss"] and len(rank0["loss"]) == len(single["loss"]) == 2


if __name__ == "__main__":
    train_and_save(sys.argv[1], sys.argv[2], int(sys.argv[3]))
