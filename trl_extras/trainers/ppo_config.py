"""Configuration of :class:`~trl_extras.trainers.ppo.PPOTrainer`.

Defaults follow Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO" (value initialised from the
reward model, reward at the last token, a penalty when no EOS was produced, whitened advantages, beta = 0.05,
gamma = 1, lambda = 0.95, 4 PPO epochs, clip 0.2) with the seed article's choices on top: the exact
full-vocabulary KL in the reward and a separate value model.

Batch layout (per process): one *rollout batch* of ``per_device_train_batch_size * gradient_accumulation_steps *
num_mini_batches`` sequences is sampled, scored and given advantages; it is then used for ``num_ppo_epochs``
passes, each pass split into ``num_mini_batches`` optimizer steps of ``gradient_accumulation_steps``
micro-batches. One Trainer ``global_step`` is one optimizer step, so ``max_steps`` counts minibatch updates and
a rollout happens every ``num_ppo_epochs * num_mini_batches`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl.trainer.base_config import _BaseConfig

KL_ESTIMATORS = ("k1", "k2", "k3", "exact")
ADVANTAGE_NORMALIZATIONS = ("batch", "group", "none")


@dataclass
class PPOConfig(_BaseConfig):
    r"""
    Configuration for :class:`~trl_extras.PPOTrainer`. Every field carries its help text (``trl-extras ppo --help``).

    A2C: one epoch over one minibatch with the ratio clip disabled is advantage actor-critic; use
    :meth:`PPOConfig.a2c` or set ``num_ppo_epochs=1, num_mini_batches=1, cliprange=None``.

    Learning rate: ``learning_rate`` (policy) defaults to ``1e-6`` as in TRL's GRPO/RLOO for billion-parameter
    models; tiny models (the testbed) need ~1e-4 (the testbed recipe sets it). The value model has its own rate,
    ``value_learning_rate`` (default ``10 x learning_rate``: the critic starts far from its targets).
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    # Overridden TrainingArguments / TRL defaults
    learning_rate: float = field(
        default=1e-6,
        metadata={"help": "Policy learning rate (AdamW). 1e-6 like TRL's GRPO for ~1B models; ~1e-4 for tiny models."},
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every X optimizer steps (PPO metrics are noisy)."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Gradient checkpointing for the policy and value models (trades compute for memory)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Default: True only when CUDA with bf16 support is available."},
    )
    remove_unused_columns: bool | None = field(
        default=False,
        metadata={"help": "Keep extra dataset columns: they reach the reward functions as keyword arguments."},
    )

    # Models
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when the policy/value/reference are given as paths."},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Disable dropout in policy, reference and value models (log-probs must be deterministic)."},
    )
    value_model_init: str | None = field(
        default=None,
        metadata={
            "help": "Where the value model comes from when `value_model` is not given: 'reward' (copy of the reward "
            "model's weights, Huang et al.) or 'policy' (policy backbone with a fresh zero head). Default: 'reward' "
            "when a reward model is among the reward functions, else 'policy'."
        },
    )
    value_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the value model's param group. Default: 10 x `learning_rate`."},
    )
    value_warmup_steps: int = field(
        default=0,
        metadata={"help": "First optimizer steps that train only the value model (policy frozen, no policy grads)."},
    )

    # Data / generation
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Prompts longer than this many tokens keep their last tokens (left truncation, warned once)."},
    )
    max_completion_length: int = field(default=256, metadata={"help": "Maximum number of sampled tokens per completion."})
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature; log-probs, KL and entropy are computed from logits / temperature."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1.0 = off)."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k sampling (None or 0 = off)."})
    num_generations: int = field(
        default=1,
        metadata={"help": "Completions sampled per prompt (> 1 enables `advantage_normalization='group'`)."},
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per `generate()` call (a memory knob). Default: the whole local rollout batch."},
    )
    shuffle_dataset: bool = field(default=True, metadata={"help": "Shuffle the prompt dataset."})

    # Reward
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One weight per reward function (default: all 1.0); the reward is their weighted sum."},
    )
    missing_eos_penalty: float | None = field(
        default=1.0,
        metadata={"help": "Subtracted from the score of completions that end without EOS (None = no penalty)."},
    )
    reward_normalization: bool = field(
        default=False,
        metadata={"help": "Divide scores by a running std and subtract a running mean (PPO-max) before the KL term."},
    )
    reward_clip: float | None = field(
        default=None,
        metadata={"help": "Clip (normalized) scores to [-reward_clip, reward_clip] before the KL term (None = off)."},
    )

    # KL penalty
    kl_estimator: str = field(
        default="exact",
        metadata={
            "help": "Per-token KL penalty in the reward: 'exact' (sum over the vocabulary, the seed's choice), "
            "'k1' (log-ratio), 'k2' (squared log-ratio / 2) or 'k3' ((r - 1) - log r)."
        },
    )
    kl_coef: float = field(default=0.05, metadata={"help": "KL coefficient beta (initial value when adaptive)."})
    adaptive_kl: bool = field(
        default=False,
        metadata={"help": "Adapt beta towards `target_kl` (Ziegler et al. 2019 proportional controller)."},
    )
    target_kl: float = field(
        default=6.0,
        metadata={"help": "Adaptive KL: target per-sequence KL to the reference (nats, summed over tokens)."},
    )
    kl_horizon: int = field(
        default=10000,
        metadata={"help": "Adaptive KL: horizon in sequences; beta *= 1 + clip(KL/target - 1, +-0.2) * n / horizon."},
    )
    exact_kl_chunk_size: int | None = field(
        default=128,
        metadata={"help": "Positions per chunk when computing exact KL/entropy (the (B, T, V) logits never coexist)."},
    )

    # PPO
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float | None = field(
        default=0.2,
        metadata={"help": "Clip of the policy ratio in the surrogate. None = no clipping (A2C with one epoch)."},
    )
    cliprange_value: float | None = field(
        default=0.2, metadata={"help": "Clip of the value change around the rollout values (None = unclipped)."}
    )
    vf_coef: float = field(
        default=0.1,
        metadata={
            "help": "Weight of the value loss in the summed loss. Policy and value parameters are disjoint, so it "
            "only scales the value gradient (mostly absorbed by Adam); `value_learning_rate` is the real knob."
        },
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(
        default=1,
        metadata={"help": "Optimizer steps per pass over the rollout batch (each of `gradient_accumulation_steps`)."},
    )
    advantage_normalization: str = field(
        default="batch",
        metadata={
            "help": "'batch': zero mean, unit variance over the whole global rollout batch (all processes); "
            "'group': per prompt across its `num_generations` completions; 'none': raw GAE advantages."
        },
    )
    advantage_keep_mean: bool = field(
        default=False, metadata={"help": "Normalization rescales to unit variance but keeps the mean."}
    )
    kl_early_stop_target: float | None = field(
        default=None,
        metadata={
            "help": "Stop a rollout batch's remaining update steps when the approximate KL (k3) between the current "
            "and the sampling policy on a minibatch exceeds this; the next step samples a fresh batch."
        },
    )
    kl_budget: float | None = field(
        default=None,
        metadata={"help": "Stop training when the mean per-sequence exact KL to the reference exceeds this (nats)."},
    )

    # Logging
    log_completions: bool = field(
        default=False, metadata={"help": "Print a few (prompt, completion, reward) samples at each log."}
    )

    def __post_init__(self):
        # Types and ranges first, before anything compares them (a YAML list or string would otherwise fail deep
        # inside the Trainer or silently train nonsense).
        from ..utils.validation import check_number

        for name in ("learning_rate", "value_learning_rate", "kl_coef", "target_kl", "vf_coef", "missing_eos_penalty",
                     "reward_clip", "kl_early_stop_target", "kl_budget", "top_p"):  # fmt: skip
            check_number(self, name, optional=True)
        check_number(self, "kl_coef", low=0)
        check_number(self, "temperature", low=0, low_open=True)
        check_number(self, "gamma", low=0, high=1)
        check_number(self, "lam", low=0, high=1)
        check_number(self, "cliprange", low=0, low_open=True, optional=True)  # None: no clipping (A2C)
        check_number(self, "cliprange_value", low=0, low_open=True, optional=True)
        check_number(self, "vf_coef", low=0)
        check_number(self, "max_completion_length", low=1, integer=True)
        check_number(self, "max_prompt_length", low=1, integer=True, optional=True)
        check_number(self, "per_device_train_batch_size", low=1, integer=True)
        check_number(self, "gradient_accumulation_steps", low=1, integer=True)
        check_number(self, "num_generations", low=1, integer=True)
        check_number(self, "num_ppo_epochs", low=1, integer=True)
        check_number(self, "num_mini_batches", low=1, integer=True)
        check_number(self, "learning_rate", low=0)

        if self.bf16 is None:
            import torch

            self.bf16 = bool(not self.fp16 and not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        super().__post_init__()
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.advantage_normalization not in ADVANTAGE_NORMALIZATIONS:
            raise ValueError(
                f"advantage_normalization must be one of {ADVANTAGE_NORMALIZATIONS}, got {self.advantage_normalization!r}"
            )
        if self.value_model_init not in (None, "reward", "policy"):
            raise ValueError(f"value_model_init must be 'reward', 'policy' or None, got {self.value_model_init!r}")
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}")
        if self.advantage_normalization == "group" and self.num_generations < 2:
            raise ValueError("advantage_normalization='group' needs num_generations >= 2 (one group per prompt).")
        if self.num_ppo_epochs < 1 or self.num_mini_batches < 1:
            raise ValueError("num_ppo_epochs and num_mini_batches must be >= 1.")
        if self.rollout_batch_size_per_device % self.num_generations:
            raise ValueError(
                f"The local rollout batch (per_device_train_batch_size * gradient_accumulation_steps * "
                f"num_mini_batches = {self.rollout_batch_size_per_device}) must be divisible by num_generations "
                f"({self.num_generations}) so that each prompt's completions stay on one process."
            )
        if self.adaptive_kl and (self.target_kl <= 0 or self.kl_horizon <= 0):
            raise ValueError("adaptive_kl needs target_kl > 0 and kl_horizon > 0.")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.value_learning_rate is None:
            self.value_learning_rate = 10 * self.learning_rate

    @property
    def steps_per_generation(self) -> int:
        """Micro-batches per rollout batch and per process: ``gradient_accumulation_steps * num_mini_batches``."""
        return self.gradient_accumulation_steps * self.num_mini_batches

    @property
    def rollout_batch_size_per_device(self) -> int:
        """Sequences sampled per process for one rollout batch."""
        return self.per_device_train_batch_size * self.steps_per_generation

    @property
    def rollout_batch_size(self) -> int:
        """Sequences sampled per rollout batch over all processes."""
        return self.rollout_batch_size_per_device * self.world_size

    @classmethod
    def a2c(cls, **kwargs) -> PPOConfig:
        """Advantage actor-critic: one epoch, one minibatch, no ratio clipping (the ratio is 1 at the only step)."""
        kwargs.setdefault("num_ppo_epochs", 1)
        kwargs.setdefault("num_mini_batches", 1)
        kwargs.setdefault("cliprange", None)
        return cls(**kwargs)
