"""awpo_kernels: fused RL policy-loss ops for LLMs (Triton on CUDA, chunked torch on CPU)."""
from .advantages import group_advantages
from .logprobs import linear_logprobs
from .options import AdvantageOptions, LossOptions
from .outputs import GroupAdvantages, LogprobsOutput, PolicyLossOutput
from .policy_loss import FusedLinearPolicyLoss, fused_linear_policy_loss, policy_loss

__version__ = "0.1.0"
__all__ = [
    "linear_logprobs", "group_advantages", "fused_linear_policy_loss", "policy_loss", "FusedLinearPolicyLoss",
    "LossOptions", "AdvantageOptions", "LogprobsOutput", "GroupAdvantages", "PolicyLossOutput",
]
