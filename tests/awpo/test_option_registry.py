"""Each AWPO advantage option is written once, in `awpo_kernels.AdvantageOptions` (default, help text,
allowed values), and every front end shows that one definition: the trainer's `Config` (and so
`python -m awpo.train --help`), TRL's `AWPOConfig`, verl's `algorithm.awpo`; the TRL fused loss types are
`LossOptions`'."""
import dataclasses

import pytest

from awpo.config import Config, build_parser
from awpo_kernels import AdvantageOptions, LossOptions

SHARED = ("estimator", "gate", "gate_threshold", "weight", "clip", "clip_ratio", "clip_max", "clip_shrink",
          "reasoning_coef")


@pytest.mark.parametrize("name", SHARED)
def test_the_trainer_config_takes_the_kernel_definition(name):
    spec = AdvantageOptions.spec(name)
    option = {f.name: f for f in dataclasses.fields(Config)}[name]
    assert option.default == spec.default == getattr(AdvantageOptions(), name)
    assert option.metadata["help"] == spec.doc and spec.doc
    assert option.metadata["choices"] == spec.choices
    assert spec.doc in " ".join(build_parser().format_help().split())  # --help shows it


@pytest.mark.parametrize("name", SHARED)
def test_trls_awpo_config_takes_the_kernel_definition(name):
    from awpo.integrations.trl.config import AWPOConfig

    spec = AdvantageOptions.spec(name)
    option = {f.name: f for f in dataclasses.fields(AWPOConfig)}[name]
    assert option.default == spec.default
    assert option.metadata["help"].startswith(f"[AWPO] {spec.doc}")


def test_choices_come_from_the_literals_and_fused_loss_types_from_loss_options():
    from awpo.integrations.trl.config import FUSED_LOSS_TYPES

    assert AdvantageOptions.spec("gate").choices == AdvantageOptions.GATES
    assert LossOptions.spec("loss_type").choices == LossOptions.LOSS_TYPES == FUSED_LOSS_TYPES
    assert AdvantageOptions.spec("clip_ratio").choices is None
    with pytest.raises(KeyError, match="no option 'gates'"):
        AdvantageOptions.spec("gates")


# What verl's ``algorithm.awpo`` takes, as the registry has it on the day this test was written: an option added to
# (or removed from) `AdvantageOptions` must be looked at here, and either reach verl or be refused there with a reason.
VERL_TAKES = ("scale", "unbiased", "eps", "outcome_range", "gate", "gate_threshold", "weight", "reasoning_coef", "clip",
              "clip_ratio", "clip_max")
VERL_REFUSES = ("estimator", "clip_shrink", "epsilon_low", "epsilon_high")


def test_verls_estimator_options_are_the_registry_but_the_refused_ones():
    from awpo.integrations.verl import estimators

    assert AdvantageOptions.names() == tuple(f.name for f in dataclasses.fields(AdvantageOptions))
    assert estimators.KERNEL_OPTIONS == VERL_TAKES
    assert tuple(estimators.NOT_FROM_VERL_CONFIG) == VERL_REFUSES
    # a partition of the registry, in its order: nothing drifts, nothing is both taken and refused
    assert set(VERL_TAKES).isdisjoint(VERL_REFUSES)
    assert [n for n in AdvantageOptions.names() if n in VERL_TAKES] == list(estimators.KERNEL_OPTIONS)
    assert set(VERL_TAKES) | set(VERL_REFUSES) == set(AdvantageOptions.names())
    for name in estimators.KERNEL_OPTIONS:
        AdvantageOptions.spec(name)  # a registry option (KeyError otherwise)
        assert f"``{name}``" in estimators.__doc__, f"the verl estimators' doc does not list {name}"


@pytest.mark.parametrize("name", VERL_TAKES)
def test_verls_algorithm_config_passes_each_option_to_group_advantages(name):
    from awpo.integrations.verl.estimators import EstimatorOptions

    default = AdvantageOptions.spec(name).default
    value = list(default) if isinstance(default, tuple) else default  # OmegaConf hands lists
    options = EstimatorOptions.from_config({"awpo": {name: value}})
    assert options.kernel == {name: default}
    assert getattr(AdvantageOptions(**options.kernel), name) == default  # a valid group_advantages option


@pytest.mark.parametrize("name", VERL_REFUSES)
def test_verls_algorithm_config_refuses_the_options_verl_sets_elsewhere(name):
    from awpo.integrations.verl.estimators import NOT_FROM_VERL_CONFIG, EstimatorOptions

    with pytest.raises(ValueError, match=f"algorithm.awpo.{name} is not supported under verl: "):
        EstimatorOptions.from_config({"awpo": {name: AdvantageOptions.spec(name).default}})
    assert NOT_FROM_VERL_CONFIG[name]
