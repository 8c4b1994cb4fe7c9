"""awpo.checkpoint: atomic saves, pruning, exact restore of optimizer / scheduler / RNG states."""
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from awpo import checkpoint as ck


def _training_objects(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, tokenizer, optimizer, scheduler


def _one_update(model, optimizer, scheduler, seed_tokens):
    ids = torch.tensor([seed_tokens])
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _save(model, tokenizer, optimizer, scheduler, out, step, **kw):
    return ck.save_checkpoint(out, step, model=model, tokenizer=tokenizer, optimizer=optimizer,
                              scheduler=scheduler, data_position=step * 3, config={"lr": 1e-3}, **kw)


def test_rng_states_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ck.capture_rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    ck.restore_rng_state(state)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first


def test_resume_restores_everything_exactly(tiny_model_dir, tmp_path):
    model, tokenizer, optimizer, scheduler = _training_objects(tiny_model_dir)
    _one_update(model, optimizer, scheduler, [5, 17, 33, 2, 101, 7, 250])
    torch.manual_seed(11)
    path = _save(model, tokenizer, optimizer, scheduler, tmp_path, 1)
    # continue the original run: one more update with RNG-dependent data
    tokens = torch.randint(3, 400, (9,)).tolist()
    _one_update(model, optimizer, scheduler, tokens)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    # a fresh process would do this: model from the checkpoint dir, then the trainer state
    resumed, tokenizer2, optimizer2, scheduler2 = _training_objects(str(path))
    state = ck.load_trainer_state(path)
    ck.restore_training_state(state, optimizer=optimizer2, scheduler=scheduler2)
    ck.restore_rng_state(state["rng"])
    assert state["step"] == 1 and state["data_position"] == 3
    assert scheduler2.last_epoch == scheduler.last_epoch - 1
    tokens2 = torch.randint(3, 400, (9,)).tolist()
    assert tokens2 == tokens                                 # the RNG continues where it stopped
    _one_update(resumed, optimizer2, scheduler2, tokens2)
    for name, tensor in resumed.state_dict().items():
        assert torch.equal(tensor, expected[name]), name    # bit-for-bit the same step


def test_checkpoint_dir_loads_with_from_pretrained(tiny_model_dir, tmp_path):
    model, tokenizer, optimizer, scheduler = _training_objects(tiny_model_dir)
    _one_update(model, optimizer, scheduler, [9, 8, 7, 6, 5])
    path = _save(model, tokenizer, optimizer, scheduler, tmp_path, 4)
    assert path.name == "checkpoint-4"
    loaded = AutoModelForCausalLM.from_pretrained(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert AutoTokenizer.from_pretrained(path)("hello tool").input_ids == tokenizer("hello tool").input_ids


def test_keeps_only_the_last_k(tiny_model_dir, tmp_path):
    model, tokenizer, optimizer, scheduler = _training_objects(tiny_model_dir)
    for step in (2, 4, 6, 8):
        _save(model, tokenizer, optimizer, scheduler, tmp_path, step, save_total_limit=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-8"]
    assert ck.latest_checkpoint(tmp_path).name == "checkpoint-8"
    assert ck.resolve_resume("latest", tmp_path).name == "checkpoint-8"
    assert ck.resolve_resume("", tmp_path) is None


def test_crash_while_saving_keeps_the_previous_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    model, tokenizer, optimizer, scheduler = _training_objects(tiny_model_dir)
    _save(model, tokenizer, optimizer, scheduler, tmp_path, 1)

    real_save = torch.save

    def crash_after_partial_write(obj, path, *args, **kwargs):  # scripted crash in the middle of a save
        real_save(obj, path, *args, **kwargs)
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ck.torch, "save", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        _save(model, tokenizer, optimizer, scheduler, tmp_path, 2)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]   # no half checkpoint, no tmp dir
    assert ck.latest_checkpoint(tmp_path).name == "checkpoint-1"
    AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-1")
    ck.load_trainer_state(tmp_path / "checkpoint-1")


def test_bad_resume_paths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ck.resolve_resume("latest", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        ck.resolve_resume(str(tmp_path), tmp_path)


def test_an_unreadable_trainer_state_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint-3"
    path.mkdir()
    (path / ck.STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="checkpoint .*checkpoint-3 is unreadable"):
        ck.load_trainer_state(path)


def test_checkpoint_step_and_the_checkpoints_after_a_step(tmp_path):
    for step in (2, 10, 7):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / ck.STATE_FILE).write_bytes(b"x")
    (tmp_path / "checkpoint-99").mkdir()  # no trainer state: not a checkpoint
    assert [p.name for p in ck.checkpoints_after(tmp_path, 2)] == ["checkpoint-7", "checkpoint-10"]
    assert len(ck.checkpoints_after(tmp_path, None)) == 3
    assert ck.checkpoint_step(tmp_path / "checkpoint-10") == 10
    with pytest.raises(ValueError, match="not named checkpoint-<step>"):
        ck.checkpoint_step(tmp_path / "renamed")


def test_metrics_file_with_an_unfinished_last_line_still_reads(tmp_path):
    from awpo.metrics import read_metrics
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(path)
