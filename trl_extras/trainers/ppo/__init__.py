"""PPO with a separate value model, advantage normalization and exact KL: ``config`` (``PPOConfig``), ``trainer``
(``PPOTrainer``, the step), ``rollout`` (``RolloutBatch``, the typed rollout batch), ``schedule`` (``PPOSchedule``:
when to roll out, which micro-batch, the approx-KL early stop), ``checkpoint`` (the extra checkpoint files and which
checkpoint is complete)."""

from .checkpoint import checkpoint_problem, latest_complete_checkpoint
from .config import PPOConfig
from .trainer import PPOTrainer

__all__ = ["PPOConfig", "PPOTrainer", "checkpoint_problem", "latest_complete_checkpoint"]
