"""Each AWPO advantage option is written once, in `awpo_kernels.AdvantageOptions` (default, help text,
allowed values), and every front end shows that one definition: the trainer's `Config` (and so
`python -m awpo.train --help`), TRL's `AWPOConfig`; the TRL fused loss types are `LossOptions`'."""
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
