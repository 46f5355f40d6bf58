"""The cross-entropy method (CEM): ``config`` (``CEMConfig``), ``trainer`` (``CEMTrainer``, the rounds), ``sft``
(``RegularizedSFTTrainer``, each round's fine-tuning), ``settings`` (the resume fingerprint), ``plots``."""

from .config import CEMConfig
from .trainer import CEMTrainer

__all__ = ["CEMConfig", "CEMTrainer"]
