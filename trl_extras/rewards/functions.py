"""One place that turns user reward specifications into scores: paths, models, callables, ensembles.

Used by every trainer and evaluator (PPO, CEM, the early-stopping callback, side-by-side, pair synthesis), so
they all score alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..modeling.peft import is_peft_model
from .scoring import RewardModelScorer, check_rewards


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


@dataclass
class RewardOutput:
    """``total`` ``(N,)`` the weighted sum; ``per_function`` ``(N, F)``; ``names`` the F function names."""

    total: torch.Tensor
    per_function: torch.Tensor
    names: list[str]


class RewardFunctions:
    """A weighted set of reward functions with GRPO's calling convention.

    Args:
        reward_funcs: one or a list of: a path to a reward model, a sequence-classification ``PreTrainedModel``,
            a callable ``f(prompts, completions, **kwargs) -> list[float]`` (GRPO's signature), or a
            ``RewardEnsemble`` (itself such a callable, returning its penalized reward).
        reward_processing_classes: tokenizers of reward models given as instances (same order; None entries ok).
        reward_weights: one weight per function (default all 1.0).
    """

    def __init__(self, reward_funcs, reward_processing_classes=None, reward_weights=None, batch_size: int = 64):
        from transformers import PreTrainedModel

        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("At least one reward function is needed.")
        procs = reward_processing_classes
        procs = procs if isinstance(procs, (list, tuple)) else [procs] * len(funcs)
        if len(procs) != len(funcs):
            raise ValueError(f"{len(procs)} reward processing classes for {len(funcs)} reward functions.")
        self.funcs = []
        for fn, proc in zip(funcs, procs):
            if isinstance(fn, (str, PreTrainedModel)) or is_peft_model(fn):
                fn = RewardModelScorer(fn, processing_class=proc, batch_size=batch_size)
            elif not callable(fn):
                raise TypeError(f"Unsupported reward function of type {type(fn).__name__}.")
            self.funcs.append(fn)
        self.names = [_name(f) for f in self.funcs]
        weights = [1.0] * len(self.funcs) if reward_weights is None else [float(w) for w in reward_weights]
        if len(weights) != len(self.funcs):
            raise ValueError(f"{len(weights)} reward weights for {len(self.funcs)} reward functions.")
        self.weights = torch.tensor(weights, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.funcs)

    def modules(self):
        """Reward models (``torch.nn.Module``) held by the functions, e.g. to move them to a device."""
        return [f.model for f in self.funcs if hasattr(f, "model") and isinstance(f.model, torch.nn.Module)]

    def __call__(self, prompts: list, completions: list, **kwargs) -> RewardOutput:
        """Score; ``kwargs`` (extra dataset columns, ``log_metric``, ``trainer_state``) reach every function."""
        columns = []
        for name, fn in zip(self.names, self.funcs):
            columns.append(check_rewards(name, fn(prompts=prompts, completions=completions, **kwargs), len(prompts)))
        per_function = torch.tensor(columns, dtype=torch.float32).T.reshape(len(prompts), len(self.funcs))
        return RewardOutput(total=per_function @ self.weights, per_function=per_function, names=list(self.names))


