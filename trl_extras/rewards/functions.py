"""One place that turns user reward specifications into scores: paths, models, callables, ensembles.

Used by every trainer and evaluator (PPO, CEM, the early-stopping callback, side-by-side, pair synthesis), so
they all score alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .scoring import check_rewards
from .source import RewardSource, load_reward, place_rewards


@dataclass
class RewardOutput:
    """``total`` ``(N,)`` the weighted sum; ``per_function`` ``(N, F)``; ``names`` the F function names."""

    total: torch.Tensor
    per_function: torch.Tensor
    names: list[str]


def check_reward_weights(weights, names: list[str]) -> torch.Tensor:
    """``(F,)`` float32 weights, one per reward; a clear error for a wrong count or a non-finite weight (also one
    that overflows float32, the dtype the rewards are summed in)."""
    weights = [float(w) for w in weights]
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} reward weights for {len(names)} reward functions ({names}).")
    tensor = torch.tensor(weights, dtype=torch.float32)
    for w, w32, name in zip(weights, tensor.tolist(), names):
        if not math.isfinite(w32):
            raise ValueError(
                f"reward_weights: the weight of reward {name!r} is {w!r}"
                + (" (not finite in float32)" if math.isfinite(w) else "")
                + "; weights must be finite numbers."
            )
    return tensor


def check_reward_matrix(per_function: torch.Tensor, total: torch.Tensor, names: list[str], weights) -> None:
    """Rewards as trained on (float32) must be finite: ``per_function`` ``(N, F)``, ``total`` ``(N,)`` their
    weighted sum. A value finite in float64 (e.g. 1e39) can be inf in float32, and so can a weighted sum of finite
    rewards; the error names the reward function and the completion index."""
    bad = ~torch.isfinite(per_function)
    if bad.any():
        i, j = bad.nonzero()[0].tolist()
        raise ValueError(
            f"Reward function {names[j]!r} returned a value for completion {i} that is {per_function[i, j].item()} "
            "in float32 (the dtype rewards are trained in): rescale the reward to a finite float32 range."
        )
    bad = ~torch.isfinite(total)
    if bad.any():
        i = int(bad.nonzero()[0])
        terms = ", ".join(f"{n}={v:g}×{w:g}" for n, v, w in zip(names, per_function[i].tolist(), weights.tolist()))
        raise ValueError(
            f"The weighted sum of rewards for completion {i} overflows float32 ({total[i].item()}): {terms}. "
            "Rescale the rewards or reward_weights."
        )


class RewardFunctions:
    """A weighted set of reward sources (:mod:`trl_extras.rewards.source`) with GRPO's calling convention.

    Args:
        reward_funcs: one or a list of anything :func:`~trl_extras.rewards.source.load_reward` takes: a path to a
            reward model (full checkpoint or LoRA adapter folder) or to a saved ``RewardEnsemble``, a
            sequence-classification ``PreTrainedModel`` / ``PeftModel``, a callable ``f(prompts, completions,
            **kwargs) -> list[float]`` (GRPO's signature), a ``RewardEnsemble``, or a ``RewardSource``.
        reward_processing_classes: tokenizers of reward models given as instances (same order; None entries ok).
        reward_weights: one weight per function (default all 1.0); finite.
        reward_names: display names, one per function (default: see ``load_reward``). Names must be distinct.
        model_init_kwargs: ``from_pretrained`` kwargs for reward models given as paths.

    ``funcs`` holds the :class:`~trl_extras.rewards.source.RewardSource` objects, ``names`` their names.
    """

    def __init__(self, reward_funcs, reward_processing_classes=None, reward_weights=None, batch_size: int = 64,
                 reward_names=None, model_init_kwargs: dict | None = None):  # fmt: skip
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("At least one reward function is needed.")
        procs = reward_processing_classes
        procs = procs if isinstance(procs, (list, tuple)) else [procs] * len(funcs)
        if len(procs) != len(funcs):
            raise ValueError(f"{len(procs)} reward processing classes for {len(funcs)} reward functions.")
        names = reward_names if isinstance(reward_names, (list, tuple)) else [reward_names] * len(funcs)
        if reward_names is not None and len(names) != len(funcs):
            raise ValueError(f"{len(names)} reward names for {len(funcs)} reward functions.")
        self.funcs: list[RewardSource] = [
            load_reward(fn, name=name, processing_class=proc, model_init_kwargs=model_init_kwargs,
                        batch_size=batch_size)  # fmt: skip
            for fn, proc, name in zip(funcs, procs, names)
        ]
        self.names = [f.name for f in self.funcs]
        weights = [1.0] * len(self.funcs) if reward_weights is None else list(reward_weights)
        self.weights = check_reward_weights(weights, self.names)
        check_unique_names(self.names)

    def __len__(self) -> int:
        return len(self.funcs)

    def modules(self) -> list[torch.nn.Module]:
        """Every module of every reward source (ensemble members included)."""
        return [m for f in self.funcs for m in f.modules()]

    def place(self, device, wrap=None) -> RewardFunctions:
        """Put every reward source's modules on ``device`` (``wrap``: see ``RewardSource.place``)."""
        place_rewards(self.funcs, device, wrap)
        return self

    @property
    def needs_calibration(self) -> bool:
        return any(f.needs_calibration for f in self.funcs)

    def value_init_model(self):
        """``(model, tokenizer)`` from the first source that can initialise a value model, else ``(None, None)``."""
        for f in self.funcs:
            found = f.value_init_model()
            if found is not None:
                return found
        return None, None

    def __call__(self, prompts: list, completions: list, **kwargs) -> RewardOutput:
        """Score; ``kwargs`` (extra dataset columns, ``log_metric``, ``trainer_state``) reach every function."""
        columns = []
        for name, fn in zip(self.names, self.funcs):
            columns.append(check_rewards(name, fn(prompts=prompts, completions=completions, **kwargs), len(prompts)))
        per_function = torch.tensor(columns, dtype=torch.float32).T.reshape(len(prompts), len(self.funcs))
        total = per_function @ self.weights
        check_reward_matrix(per_function, total, self.names, self.weights)
        return RewardOutput(total=total, per_function=per_function, names=list(self.names))


class WeightedReward(RewardSource):
    """Several reward sources as ONE source returning their weighted sum, for consumers that take a single reward
    (side-by-side, SFT reward early stopping): the sum is scored by :class:`RewardFunctions` (validated in float32)
    and the modules of every part are placed through the contract."""

    def __init__(self, functions: RewardFunctions, name: str = "weighted_reward"):
        self.functions = functions
        self.name = name

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return self.functions(prompts, completions, **kwargs).total.tolist()

    def _identity_target(self):
        return self.functions

    def modules(self) -> list[torch.nn.Module]:
        return self.functions.modules()

    def place(self, device, wrap=None) -> None:
        self.functions.place(device, wrap)

    @property
    def needs_calibration(self) -> bool:
        return self.functions.needs_calibration

    def __repr__(self) -> str:
        return f"WeightedReward({list(zip(self.functions.names, self.functions.weights.tolist()))})"


def check_unique_names(names: list[str], what: str = "reward") -> None:
    """Distinct display names, else a clear error (metrics, completion tables and parquet columns are keyed by them)."""
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(
                f"Two {what} functions are named {name!r} (names: {names}); metrics, completion tables and parquet "
                f"columns are keyed by name. Give them distinct names (reward_names=[...]), or save the reward models "
                "in folders with distinct last names."
            )
        seen.add(name)
