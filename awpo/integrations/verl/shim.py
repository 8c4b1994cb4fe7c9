"""Make verl hand ``non_tensor_batch`` (the per-sample outcome and reasoning scores) to AWPO's estimators.

verl copies every key of a reward function's dict into ``non_tensor_batch``, but verl 0.9.1 passes
``non_tensor_batch`` only to its own ``gdpo`` estimator: a registered estimator receives
``token_level_rewards``, ``response_mask``, ``config`` and ``index``. And the v1 trainer
(``trainer.use_v1=True``, the default) builds the batch for ``compute_advantage`` from the
TransferQueue fields ``uid``, ``response_mask``, ``rm_scores``, ... without the reward's extra info.

The shim, for the verl versions in ``SHIMMED_VERSIONS``:

- wraps ``verl.trainer.ppo.ray_trainer.compute_advantage`` (legacy trainer, and the v1 trainer, whose
  ``compute_advantage_for_multi_trajectories`` calls it): while verl's own function runs, the batch's
  ``non_tensor_batch`` sits in a context variable that AWPO's estimators read
  (``current_non_tensor_batch``). verl's code runs unchanged; other estimators never look;
- wraps the v1 ``PPOTrainer._compute_advantage``: when ``algorithm.adv_estimator`` is one of AWPO's,
  it first reads the score keys from each trajectory's ``extra_fields["reward_extra_info"]`` in the
  TransferQueue (or from fields of that name, where a colocated reward model wrote them), and the
  ``compute_advantage`` wrapper adds them to the batch's ``non_tensor_batch``;
- wraps ``verl.utils.config.validate_config`` (the launching process, before Ray starts): a config that
  uses AWPO without a route that registers the plugin in verl's Ray workers is refused
  (``registration.check``).

Modules imported after the plugin are patched as they finish executing (an import hook); modules
already imported are patched at once, including every module that took ``compute_advantage`` by name.
A verl version not listed raises ``UnsupportedVerlVersion``. Once a verl release passes
``non_tensor_batch`` to every estimator (and the v1 trainer fetches the reward's extra info), it goes
into ``NATIVE_VERSIONS``: nothing is patched there, and the estimators take ``non_tensor_batch`` from
their keyword arguments, which they already prefer.
"""
from __future__ import annotations

import contextvars
import functools
import importlib.abc
import importlib.metadata
import inspect
import sys
from collections.abc import Callable, Iterable

import numpy as np

SHIMMED_VERSIONS = ("0.9.1",)
NATIVE_VERSIONS: tuple[str, ...] = ()
RAY_TRAINER = "verl.trainer.ppo.ray_trainer"
V1_TRAINER = "verl.trainer.ppo.v1.trainer_base"
CONFIG = "verl.utils.config"  # validate_config: the launching process's start-up check (registration.check)

_NON_TENSOR_BATCH = contextvars.ContextVar("awpo_verl_non_tensor_batch", default=None)
_V1_SCORES = contextvars.ContextVar("awpo_verl_v1_scores", default=None)
_SHIMMED = "__awpo_shim__"  # attribute on a wrapper: the function it wraps
_state = {"hook": None, "estimators": frozenset(), "score_keys": None}


class UnsupportedVerlVersion(RuntimeError):
    """The installed verl is not one the shim was written against."""


def current_non_tensor_batch():
    """The ``non_tensor_batch`` of the batch whose advantages verl is computing now, or None."""
    return _NON_TENSOR_BATCH.get()


def installed_version() -> str:
    """verl's version: ``verl.__version__`` when verl is (being) imported, else its distribution's."""
    module = sys.modules.get("verl")
    version = getattr(module, "__version__", None)
    return version if isinstance(version, str) else importlib.metadata.version("verl")


def needs_shim(version: str) -> bool:
    """True for the versions the shim patches, False for those that pass the data themselves."""
    release = version.split("+", 1)[0]  # a local build of a listed release is that release
    if release in SHIMMED_VERSIONS:
        return True
    if release in NATIVE_VERSIONS:
        return False
    raise UnsupportedVerlVersion(
        f"awpo.integrations.verl does not know verl {version!r}. AWPO's advantage estimators need each "
        "sample's outcome and reasoning scores (non_tensor_batch), which verl hands only to its own 'gdpo' "
        "estimator; awpo patches verl's compute_advantage for the versions it was checked against: "
        f"{', '.join(SHIMMED_VERSIONS)}. Install one of them (pip install 'verl=={SHIMMED_VERSIONS[-1]}').")


def install(estimators: Iterable[str], score_keys: Callable, version: str | None = None) -> bool:
    """Apply the shim for ``estimators`` (verl names) if the verl version needs it; True when applied.

    ``score_keys(algorithm_config)`` names the non_tensor_batch keys the estimators read (the v1
    trainer fetches them). Idempotent: patched functions are recognised and left alone.
    """
    version = installed_version() if version is None else version
    if not needs_shim(version):
        return False
    _state["estimators"] = frozenset(estimators)
    _state["score_keys"] = score_keys
    if _state["hook"] is None:
        _state["hook"] = _AfterImport({RAY_TRAINER: _patch_ray_trainer, V1_TRAINER: _patch_v1_trainer,
                                       CONFIG: _patch_validate_config})
        sys.meta_path.insert(0, _state["hook"])
    for name, patch in _state["hook"].patches.items():
        if name in sys.modules:
            patch(sys.modules[name])
    return True


def is_patched(function) -> bool:
    return hasattr(function, _SHIMMED)


# ----------------------------------------------------------------------------- the patches

def _patch_ray_trainer(module) -> None:
    original = module.compute_advantage
    if is_patched(original):
        return
    _check_parameters(original, ("data", "adv_estimator"), f"{RAY_TRAINER}.compute_advantage")
    _rebind("compute_advantage", original, _wrap_compute_advantage(original))


def _rebind(name: str, original, wrapper) -> None:
    """`wrapper` in place of `original` in every loaded module that holds it under `name` (its own module, and every
    module that did `from ... import name`)."""
    for loaded in list(sys.modules.values()):
        namespace = getattr(loaded, "__dict__", None)  # not getattr(): lazy modules import on lookup
        if isinstance(namespace, dict) and namespace.get(name) is original:
            setattr(loaded, name, wrapper)


def _patch_validate_config(module) -> None:
    """verl's `validate_config` (the launching process, before Ray starts) also refuses a config that uses AWPO when
    no route registers the plugin in verl's Ray workers (`registration.check`)."""
    original = module.validate_config
    if is_patched(original):
        return
    _check_parameters(original, ("config",), f"{CONFIG}.validate_config")

    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        result = original(config, *args, **kwargs)
        from .registration import check

        check(config)
        return result

    setattr(validate_config, _SHIMMED, original)
    _rebind("validate_config", original, validate_config)


def _wrap_compute_advantage(original):
    @functools.wraps(original)
    def compute_advantage(data, *args, **kwargs):
        extra = _V1_SCORES.get()
        if extra:
            for key, values in extra.items():
                if len(values) == len(data):
                    data.non_tensor_batch.setdefault(key, values)
        token = _NON_TENSOR_BATCH.set(data.non_tensor_batch)
        try:
            return original(data, *args, **kwargs)
        finally:
            _NON_TENSOR_BATCH.reset(token)

    setattr(compute_advantage, _SHIMMED, original)
    return compute_advantage


def _patch_v1_trainer(module) -> None:
    trainer = module.PPOTrainer
    original = trainer.__dict__["_compute_advantage"]
    if is_patched(original):
        return
    _check_parameters(original, ("self", "batch", "metrics"), f"{V1_TRAINER}.PPOTrainer._compute_advantage")

    @functools.wraps(original)
    def _compute_advantage(self, batch, metrics):
        algorithm = self.config.algorithm
        estimator = algorithm.adv_estimator
        if getattr(estimator, "value", estimator) not in _state["estimators"]:  # verl's names may be enums
            return original(self, batch, metrics)
        queue = sys.modules[original.__module__].tq  # the TransferQueue module trainer_base uses
        token = _V1_SCORES.set(fetch_v1_scores(queue, batch, _state["score_keys"](algorithm)))
        try:
            return original(self, batch, metrics)
        finally:
            _V1_SCORES.reset(token)

    setattr(_compute_advantage, _SHIMMED, original)
    trainer._compute_advantage = _compute_advantage


def fetch_v1_scores(queue, batch, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """Per-trajectory score arrays for ``keys``, in ``batch.keys`` order, from the TransferQueue.

    Each trajectory's reward extra info is in its ``extra_fields`` (written by the agent loop); a
    colocated reward model writes the keys as fields of their own. Keys found in neither are left
    out (the estimator then says which key it is missing).
    """
    infos = [_reward_extra_info(row) for row in _field(queue, batch, "extra_fields") or []]
    scores = {}
    for key in keys:
        values = [info[key] for info in infos] if infos and all(key in info for info in infos) else None
        values = values if values is not None else _field(queue, batch, key)
        if values is not None:
            scores[key] = _object_array(values)
    return scores


def _field(queue, batch, name: str) -> list | None:
    """One field of every trajectory in the batch, or None when the queue does not hold it.

    TransferQueue (0.1.11, verl 0.9.1's) leaves a field the keys do not have out of its answer (``select_fields``
    keeps the known ones; with none left it returns an empty TensorDict), so absence is a missing key in the
    answer, and only that is None (the estimator then reports the missing score key). Anything the queue raises
    (keys or partition not found, fields not ready, a lost controller) is an error and propagates.
    """
    data = queue.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[name])
    if name not in data.keys():
        return None
    return list(data[name])


def _reward_extra_info(row) -> dict:
    fields = _unwrap(row)
    info = _unwrap(fields.get("reward_extra_info")) if isinstance(fields, dict) else None
    return info if isinstance(info, dict) else {}


def _unwrap(value):
    """The value inside a tensordict NonTensorData (how the queue may hand back non-tensor values)."""
    from tensordict import NonTensorData

    return value.data if isinstance(value, NonTensorData) else value


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = [_unwrap(v) for v in values]
    return array


def _check_parameters(function, expected: tuple[str, ...], name: str) -> None:
    found = tuple(inspect.signature(function).parameters)[: len(expected)]
    if found != expected:
        raise UnsupportedVerlVersion(f"{name} takes {found}, not {expected} as in the verl versions awpo's shim "
                                     f"knows ({', '.join(SHIMMED_VERSIONS)}): this verl is not one of them")


# ----------------------------------------------------------------------------- the import hook

class _AfterImport(importlib.abc.MetaPathFinder):
    """Patches a module right after it executes, for modules imported after the plugin."""

    def __init__(self, patches: dict[str, Callable]):
        self.patches = patches

    def find_spec(self, fullname, path, target=None):
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader, then applies the patch."""

    def __init__(self, loader, patch: Callable):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):  # get_source, get_filename, is_package, ...: the real loader's
        return getattr(self._loader, name)
