"""Configuration of :class:`~trl_extras.trainers.ppo.trainer.PPOTrainer`.

Defaults follow Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO" (value initialised from the
reward model, reward at the last token, a penalty when no EOS was produced, whitened advantages, beta = 0.05,
gamma = 1, lambda = 0.95, 4 PPO epochs, clip 0.2) with the article's choices on top: the exact
full-vocabulary KL in the reward and a separate value model.

Batch layout, with TRL ``GRPOConfig``'s names and meanings: one *rollout batch* of ``generation_batch_size =
per_device_train_batch_size * num_processes * steps_per_generation`` sequences is sampled, scored and given
advantages, where ``steps_per_generation = gradient_accumulation_steps * num_mini_batches`` is the number of
micro-batches per process it is cut into. It is then used for ``num_ppo_epochs`` passes, each pass split into
``num_mini_batches`` optimizer steps of ``gradient_accumulation_steps`` micro-batches. Set any one of
``num_mini_batches``, ``steps_per_generation`` or ``generation_batch_size``; the others follow. One Trainer
``global_step`` is one optimizer step, so ``max_steps`` counts minibatch updates and a rollout happens every
``num_ppo_epochs * num_mini_batches`` steps. (``generation_chunk_size`` is only a memory knob of ``generate()``.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from trl.trainer.base_config import _BaseConfig

from ...core.advantages import ADVANTAGE_NORMALIZATIONS
from ...core.kl import KL_ESTIMATORS
from ...core.ppo import LOSS_TYPES
from ...utils.completions import LOG_COMPLETIONS_HELP, LOG_UNIQUE_PROMPTS_HELP, NUM_COMPLETIONS_TO_PRINT_HELP
from ...utils.finite import NONFINITE_ACTION_HELP
from ...utils.resume import RESUME_ALLOW_CHANGES_HELP
from ..sampler_config import GENERATION_BACKEND_DICT_FIELDS, GenerationBackendConfig

logger = logging.getLogger(__name__)


@dataclass
class PPOConfig(GenerationBackendConfig, _BaseConfig):
    r"""
    Configuration for :class:`~trl_extras.PPOTrainer`. Every field carries its help text (``trl-extras ppo --help``).

    A2C: one epoch over one minibatch with the ratio clip disabled is advantage actor-critic; use
    :meth:`PPOConfig.a2c` or set ``num_ppo_epochs=1, num_mini_batches=1, cliprange=None``.

    Learning rate: ``learning_rate`` (policy) defaults to ``1e-6`` as in TRL's GRPO/RLOO for billion-parameter
    models; tiny models (the testbed) need ~1e-4 (the testbed recipe sets it). The value model has its own rate,
    ``value_learning_rate`` (default ``10 x learning_rate``: the critic starts far from its targets).
    """

    _VALID_DICT_FIELDS = (
        _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs", "generation_kwargs"] + GENERATION_BACKEND_DICT_FIELDS
    )

    # Overridden TrainingArguments / TRL defaults
    learning_rate: float = field(
        default=1e-6,
        metadata={"help": "Policy learning rate (AdamW). 1e-6 like TRL's GRPO for ~1B models; ~1e-4 for tiny models."},
    )
    logging_steps: float = field(
        default=1,
        metadata={"help": "Log every X optimizer steps (PPO metrics are noisy). Update metrics (loss/*, policy/*, "
                  "value/clipfrac) are averaged over the steps since the last log; rollout metrics (reward, rewards/*, "
                  "kl/*, entropy, completions/*, value/explained_variance, advantages/mean) are measured once per "
                  "rollout batch and logged at every step that trains on it. All are global over processes."},
    )
    max_steps: int = field(
        default=-1,
        metadata={"help": "Total number of OPTIMIZER steps (Trainer's global_step), not rollouts: each rollout batch "
                  "gives num_ppo_epochs x num_mini_batches optimizer steps, so the run samples "
                  "ceil(max_steps / (num_ppo_epochs * num_mini_batches)) rollout batches. -1: use num_train_epochs."},
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Gradient checkpointing for the policy and value models (trades compute for memory); off "
                  "unless set. The deprecated alias of transformers' `activation_checkpointing`, which it mirrors "
                  "(unset here, so that a plain config does not trigger transformers' deprecation warning)."},
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
        metadata={
            "help": "Disable dropout in policy, reference and value models (TRL and Huang et al. do). The rollout's "
            "log-probs are computed in eval mode and the update's in train mode, so with dropout on (False) the "
            "ratio is not 1 at the first update and the clip sees dropout noise (warned)."
        },
    )
    value_model_init: str | None = field(
        default=None,
        metadata={
            "help": "Where the value model comes from when `value_model` is not given: 'reward' (copy of the first "
            "reward model's weights, Huang et al.; a LoRA reward model's adapter merged into it, its head kept; with "
            "`peft_config` the copy then gets its own LoRA) or 'policy' (policy backbone with a fresh zero head). "
            "Default: 'reward' when a reward model is among the reward functions, else 'policy'."
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
    top_p: float = field(
        default=1.0,
        metadata={
            "help": "Nucleus sampling threshold (1.0 = off). Anything below 1 makes the update off-policy (log-probs "
            "use the untruncated softmax(logits / temperature)); warned at construction."
        },
    )
    top_k: int | None = field(
        default=None,
        metadata={
            "help": "Top-k sampling (None or 0 = off; the checkpoint's generation_config is never used). Setting it "
            "makes the update off-policy; warned at construction."
        },
    )
    min_p: float | None = field(
        default=None,
        metadata={"help": "Min-p sampling (None = off), as in TRL's GRPOConfig. Makes the update off-policy (warned)."},
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Repetition penalty at sampling (1.0 = off), as in TRL's GRPOConfig. Makes the update off-policy "
            "(warned)."
        },
    )
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Other `transformers.GenerationConfig` fields for sampling (e.g. `suppress_tokens`), overriding "
            "the fields above; every field not given is off (see `trl_extras.modeling.generation.sampling_generation_config`"
            "), never read from the checkpoint's generation_config. Any that changes the distribution is warned."
        },
    )
    num_generations: int = field(
        default=1,
        metadata={"help": "Completions sampled per prompt (> 1 enables `advantage_normalization='group'`)."},
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sequences per rollout batch over all processes, as in TRL's GRPOConfig: "
            "per_device_train_batch_size * num_processes * steps_per_generation. Mutually exclusive with "
            "`steps_per_generation`; default from `num_mini_batches`."
        },
    )
    steps_per_generation: int | None = field(
        default=None,
        metadata={
            "help": "Micro-batches per process per rollout batch, as in TRL's GRPOConfig: gradient_accumulation_steps"
            " * num_mini_batches (must be a multiple of gradient_accumulation_steps). Mutually exclusive with "
            "`generation_batch_size`; default from `num_mini_batches`."
        },
    )
    generation_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per `generate()` call (a memory knob). Default: the whole local rollout batch."},
    )
    shuffle_dataset: bool = field(default=True, metadata={"help": "Shuffle the prompt dataset."})

    # Reward
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One weight per reward function (default: all 1.0); the reward is their weighted sum."},
    )
    reward_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "One display name per reward function (metrics `rewards/<name>/mean`, completion tables). "
            "Default: a reward-model path's last folder, a function's `__name__`. Names must be distinct."
        },
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={
            "help": "Subtracted from the score of completions that reach max_completion_length without EOS (None = "
            "off). Helps when truncated answers would otherwise score well, e.g. summaries cut at a length limit "
            "(Huang et al.'s TL;DR setting, where the score is replaced by -1); on tasks where a short answer is not "
            "wanted it pushes the policy to end early."
        },
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
            "help": "Per-token KL penalty, a name in trl_extras.core.kl.KL_PENALTIES: 'exact' (sum over the "
            "vocabulary, the article's choice: -beta*KL_t in the reward AND beta*KL_t with its gradient in the policy "
            "loss, i.e. the full Rao-Blackwellized KL gradient, at the cost of a reference forward per update "
            "micro-batch), or in the reward only: 'k1' (log-ratio: the KL's score-function gradient), 'k2' (squared "
            "log-ratio / 2) or 'k3' ((r - 1) - log r). A registered penalty declares whether it needs the full "
            "vocabulary and whether it adds its direct gradient to the loss."
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
    cache_reference_states: bool = field(
        default=True,
        metadata={
            "help": "With kl_estimator='exact': keep the reference trunk's final hidden states, computed once by the "
            "rollout statistics, in the rollout batch (`RolloutBatch.ref_hidden`), so the update runs only the reference's "
            "head per chunk, never its trunk. Size: rollout_batch_size (per process) x max_completion_length x "
            "hidden_size x the trunk's dtype bytes, on the training device and in checkpoints' rollout buffer "
            "(e.g. 64 x 256 x 576 x 2 B = 18 MiB for SmolLM2 in bf16; 64 x 1024 x 4096 x 2 B = 512 MiB for a 7B "
            "model). False: the update re-runs the reference trunk on every micro-batch (no extra memory)."
        },
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
    num_mini_batches: int | None = field(
        default=None,
        metadata={
            "help": "Optimizer steps per pass over the rollout batch (each of `gradient_accumulation_steps` "
            "micro-batches). Default: from `steps_per_generation`/`generation_batch_size`, else 1."
        },
    )
    loss_type: str = field(
        default="dapo",
        metadata={
            "help": "How per-token policy/value losses are aggregated, with TRL GRPOConfig's names: 'dapo' (sum / "
            "valid tokens of the whole accumulated batch on all processes: gradient accumulation does not change "
            "the gradient), 'bnpo' (token mean per micro-batch / accumulation steps), 'grpo' (per-sequence mean, "
            "then mean over sequences) or 'dr_grpo' (sum / (batch * max_completion_length))."
        },
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
            "help": "When the approximate KL(old || new) (k3 on the rollout's samples) of a minibatch exceeds this, "
            "the rest of this rollout batch's updates (minibatches and epochs) are skipped: those optimizer steps are "
            "no-ops (no forward, no gradient, weights unchanged; they still count in global_step) and training goes "
            "on with the next rollout batch."
        },
    )
    kl_budget: float | None = field(
        default=None,
        metadata={"help": "Stop training when the mean per-sequence exact KL to the reference exceeds this (nats)."},
    )

    # Logging
    log_completions: bool = field(default=False, metadata={"help": LOG_COMPLETIONS_HELP})
    num_completions_to_print: int | None = field(default=None, metadata={"help": NUM_COMPLETIONS_TO_PRINT_HELP})
    log_unique_prompts: bool = field(default=False, metadata={"help": LOG_UNIQUE_PROMPTS_HELP})

    # Reliability
    nonfinite_action: str = field(default="error", metadata={"help": NONFINITE_ACTION_HELP})

    # Resume
    resume_allow_changes: list[str] | None = field(default=None, metadata={"help": RESUME_ALLOW_CHANGES_HELP})

    def __post_init__(self):
        from ...utils.resume import normalize_allow_changes

        self.resume_allow_changes = normalize_allow_changes(self.resume_allow_changes)
        # Types and ranges first, before anything compares them (a YAML list or string would otherwise fail deep
        # inside the Trainer or silently train nonsense).
        from ...utils.finite import check_nonfinite_action
        from ...utils.validation import check_finite_fields, check_number

        check_finite_fields(self)  # every float, the Trainer's own (max_grad_norm, adam_epsilon, ...) included
        check_nonfinite_action(self.nonfinite_action)

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
        for name in ("num_mini_batches", "steps_per_generation", "generation_batch_size", "generation_chunk_size"):
            check_number(self, name, low=1, integer=True, optional=True)  # None: derived from the others
        check_number(self, "min_p", low=0, high=1, optional=True)
        check_number(self, "repetition_penalty", low=0, low_open=True, optional=True)
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
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.num_ppo_epochs < 1:
            raise ValueError(f"num_ppo_epochs must be >= 1, got {self.num_ppo_epochs}")
        self._resolve_batch_layout()
        if self.rollout_batch_size_per_device % self.num_generations:
            raise ValueError(
                f"The local rollout batch (per_device_train_batch_size * steps_per_generation = "
                f"{self.rollout_batch_size_per_device}) must be divisible by num_generations "
                f"({self.num_generations}) so that each prompt's completions stay on one process."
            )
        if not self.disable_dropout:
            logger.warning(
                "PPOConfig(disable_dropout=False): the rollout's old log-probs are computed without dropout (eval "
                "mode) and the update's with it (train mode), so the PPO ratio is not 1 at the first update."
            )
        if self.adaptive_kl and (self.target_kl <= 0 or self.kl_horizon <= 0):
            raise ValueError("adaptive_kl needs target_kl > 0 and kl_horizon > 0.")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.value_learning_rate is None:
            self.value_learning_rate = 10 * self.learning_rate

    def _resolve_batch_layout(self) -> None:
        """num_mini_batches, steps_per_generation and generation_batch_size from whichever one was set (TRL's
        GRPOConfig resolves the last two the same way)."""
        ga, per_step = self.gradient_accumulation_steps, self.per_device_train_batch_size * self.world_size
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("Set `generation_batch_size` or `steps_per_generation`, not both.")
        if self.generation_batch_size is not None:
            if self.generation_batch_size <= 0 or self.generation_batch_size % per_step:
                raise ValueError(
                    f"generation_batch_size ({self.generation_batch_size}) must be a positive multiple of "
                    f"per_device_train_batch_size * num_processes ({per_step})."
                )
            self.steps_per_generation = self.generation_batch_size // per_step
        if self.steps_per_generation is not None:
            if self.steps_per_generation <= 0 or self.steps_per_generation % ga:
                raise ValueError(
                    f"steps_per_generation ({self.steps_per_generation}) must be a positive multiple of "
                    f"gradient_accumulation_steps ({ga}): each optimizer step uses whole rollout micro-batches."
                )
            implied = self.steps_per_generation // ga
            if self.num_mini_batches is not None and self.num_mini_batches != implied:
                raise ValueError(
                    f"num_mini_batches={self.num_mini_batches} contradicts steps_per_generation / "
                    f"gradient_accumulation_steps = {implied}: set one of them."
                )
            self.num_mini_batches = implied
        if self.num_mini_batches is None:
            self.num_mini_batches = 1
        if self.num_mini_batches < 1:
            raise ValueError(f"num_mini_batches must be >= 1, got {self.num_mini_batches}")
        self.steps_per_generation = ga * self.num_mini_batches
        self.generation_batch_size = per_step * self.steps_per_generation

    @property
    def rollout_batch_size_per_device(self) -> int:
        """Sequences sampled per process for one rollout batch."""
        return self.per_device_train_batch_size * self.steps_per_generation

    @property
    def rollout_batch_size(self) -> int:
        """Sequences sampled per rollout batch over all processes (= ``generation_batch_size``)."""
        return self.generation_batch_size

    @classmethod
    def a2c(cls, **kwargs) -> PPOConfig:
        """Advantage actor-critic: one epoch, one minibatch, no ratio clipping (the ratio is 1 at the only step)."""
        kwargs.setdefault("num_ppo_epochs", 1)
        kwargs.setdefault("num_mini_batches", 1)
        kwargs.setdefault("cliprange", None)
        return cls(**kwargs)
