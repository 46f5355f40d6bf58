"""The cross-entropy method (CEM): ``config`` (``CEMConfig``), ``trainer`` (``CEMTrainer``, the rounds), ``round``
(``CEMRound``, one round's record), ``sft`` (``RegularizedSFTTrainer``, each round's fine-tuning), ``settings`` (the
resume fingerprint), ``plots``."""

from .config import CEMConfig
from .round import CEMRound
from .trainer import CEMTrainer

__all__ = ["CEMConfig", "CEMRound", "CEMTrainer"]
