"""AWPO inside TRL: `AWPOTrainer`, a drop-in `GRPOTrainer` (accelerate: DDP, FSDP, DeepSpeed; vLLM rollouts).

```python
from awpo.data import builtin_dataset
from awpo.integrations.trl import AWPOConfig, AWPOTrainer, outcome_reward, reasoning_reward

args = AWPOConfig(output_dir="runs/trl", num_generations=8, estimator="awpo", gate="soft")
trainer = AWPOTrainer(model="path/or/model", reward_funcs=[outcome_reward, reasoning_reward], args=args,
                      train_dataset=builtin_dataset("train"))
trainer.train()
```

Needs `trl`, `accelerate` and `datasets` (`pip install .[trl]`); importing `awpo` alone needs none of them.
"""
from .config import AWPOConfig
from .rewards import OutcomeReward, ReasoningReward, outcome_reward, reasoning_reward
from .trainer import AWPOTrainer

__all__ = ["AWPOConfig", "AWPOTrainer", "OutcomeReward", "ReasoningReward", "outcome_reward", "reasoning_reward"]
