"""Configuration of :class:`~trl_extras.trainers.cem.trainer.CEMTrainer` (the article's "poor man's RL")."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from ...utils.completions import LOG_UNIQUE_PROMPTS_HELP, NUM_COMPLETIONS_TO_PRINT_HELP
from ...utils.finite import NONFINITE_ACTION_HELP
from ...utils.resume import RESUME_ALLOW_CHANGES_HELP, normalize_allow_changes
from ..sampler_config import GENERATION_BACKEND_DICT_FIELDS, GenerationBackendConfig


@dataclass
class CEMConfig(GenerationBackendConfig, SFTConfig):
    r"""Configuration for the cross-entropy method: sample N answers per prompt, keep the elites, fine-tune; repeat.

    Inherits every [`~trl.SFTConfig`] argument: those (``learning_rate``, ``num_train_epochs`` -- default 1 here,
    not SFTConfig's 3 -- ``per_device_train_batch_size``, ...) configure the fine-tuning step of *each* round. ``output_dir`` holds
    ``round_{r}/generations`` (a dataset of every sample with its rewards), ``round_{r}/model`` and
    ``round_{r}/metrics.json`` per round, ``cem_history.json`` and ``cem_history.png``.

    Diversity controls (the article: "after the first iteration, the model loses much of the original variation"):
    ``sft_mix_ratio`` (replay original SFT data), ``kl_coef`` (exact KL to the initial model in the fine-tuning
    loss), ``entropy_coef`` (entropy bonus), ``temperature_end`` (a sampling-temperature schedule), and the floors
    ``min_entropy`` / ``min_distinct_n`` that stop the run when diversity is gone.
    """

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS + GENERATION_BACKEND_DICT_FIELDS

    # rounds and sampling
    num_rounds: int = field(
        default=3,
        metadata={"help": "Number of sample -> select -> fine-tune rounds. Rounds count from 0 everywhere: folders "
                  "round_0, round_1, ..., the `round` of cem_history.json and the log line 'round 0 of 0..2'."},
    )
    num_train_epochs: float = field(
        default=1.0,
        metadata={"help": "Epochs of fine-tuning on EACH round's elites (and replayed SFT rows): 1 by default, so a "
                  "round's elites are seen once and the next round samples again (the iterate-and-resample loop of "
                  "ReST / trlx's RFT); SFTConfig's default of 3 would fit a few elites three times per round. "
                  "`max_steps` > 0 overrides it, per round."},
    )
    num_generations: int = field(
        default=8, metadata={"help": "Answers sampled per prompt (N of best-of-N). Must be >= 2: selection needs a choice."}
    )
    prompts_per_round: int | None = field(
        default=None,
        metadata={"help": "Prompts drawn (without replacement, seeded per round) from the train set each round; "
                  "None uses all of them."},
    )
    generation_chunk_size: int = field(
        default=64,
        metadata={"help": "Sequences per `generate()` call (a memory knob; whole prompts: max(1, chunk // "
                  "num_generations) prompts x num_generations). Each chunk is sampled from its own random stream, "
                  "so the samples do not depend on the number of processes (they do depend on this value)."},
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Not used by CEM: completions per round are prompts_per_round x num_generations (what TRL's "
                  "GRPOConfig calls generation_batch_size). It used to be the generate() chunk "
                  "size; set `generation_chunk_size` instead (setting this one is an error)."},
    )
    max_completion_length: int = field(default=64, metadata={"help": "Maximum new tokens per sampled answer."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Prompts longer than this keep their last tokens (None: no truncation)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of round 0."})
    temperature_end: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature of the last round; linear schedule from `temperature` (a diversity "
                  "control: raise it to keep exploring as the policy sharpens). None: constant temperature."},
    )
    top_k: int | None = field(default=None, metadata={"help": "Top-k sampling (None: disabled)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling probability."})

    # elite selection
    elite_top_k: int | None = field(
        default=1, metadata={"help": "Keep the best k answers per prompt (1 = best-of-N). None: no top-k rule."}
    )
    elite_quantile: float | None = field(
        default=None,
        metadata={"help": "Keep answers at or above this per-prompt reward quantile (the CEM elite set), e.g. 0.75. "
                  "None: no quantile rule."},
    )
    elite_quantile_end: float | None = field(
        default=None,
        metadata={"help": "Quantile of the last round; linear schedule from `elite_quantile` (trlx RFT raises it). "
                  "None: constant."},
    )
    reward_threshold: float | None = field(
        default=None, metadata={"help": "Keep only answers with reward >= this absolute value. None: no threshold."}
    )
    dedupe: bool = field(
        default=True, metadata={"help": "Drop duplicate answers within a prompt before selecting elites."}
    )

    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights of the reward functions (one per function; default all 1.0), as GRPOConfig's."},
    )

    # diversity controls
    sft_mix_ratio: float = field(
        default=0.0,
        metadata={"help": "Rows of the original SFT data (`sft_dataset`) added to each round's fine-tuning set, as a "
                  "fraction of the elite count (0.5: one SFT row per two elites)."},
    )
    kl_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of the exact per-token KL(policy || initial model) added to the fine-tuning loss on "
                  "completion tokens (reference = adapter disabled under PEFT, else a frozen copy)."},
    )
    entropy_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of an entropy bonus subtracted from the fine-tuning loss on completion tokens."},
    )
    min_entropy: float | None = field(
        default=None,
        metadata={"help": "Stop (before fine-tuning) when the mean token entropy of a round's samples falls below "
                  "this (nats). None: no floor."},
    )
    min_distinct_n: float | None = field(
        default=None,
        metadata={"help": "Stop when the per-prompt distinct-n of a round's samples falls below this. None: no floor."},
    )
    distinct_n_order: int = field(default=2, metadata={"help": "n of the distinct-n used by `min_distinct_n`."})

    # bookkeeping
    resume: bool = field(
        default=True,
        metadata={"help": "Resume from `output_dir`: skip finished rounds (load the last round's model) and reuse "
                  "saved generations/scores of an interrupted round. False: start over (existing rounds are "
                  "overwritten)."},
    )
    resume_allow_changes: list[str] | None = field(default=None, metadata={"help": RESUME_ALLOW_CHANGES_HELP})
    entropy_batch_size: int = field(
        default=64, metadata={"help": "Rows per forward pass when measuring the token entropy of samples."}
    )
    eval_num_generations: int = field(
        default=1, metadata={"help": "Answers sampled per eval prompt after each round (when `eval_dataset` is set)."}
    )
    plot: bool = field(default=True, metadata={"help": "Write `cem_history.png` (matplotlib, Agg backend)."})
    log_completions: bool = field(
        default=False,
        metadata={"help": "Whether to log each round's (prompt, completion, reward, elite) rows once the elites are "
                  "selected. If `rich` is installed, it prints them. If `wandb` and/or `trackio` logging is enabled, it "
                  "logs them to `wandb` and/or `trackio` (TRL GRPOConfig's option; every row is also saved in "
                  "`round_{r}/generations`)."},
    )
    num_completions_to_print: int | None = field(default=None, metadata={"help": NUM_COMPLETIONS_TO_PRINT_HELP})
    log_unique_prompts: bool = field(default=False, metadata={"help": LOG_UNIQUE_PROMPTS_HELP})
    nonfinite_action: str = field(
        default="error", metadata={"help": NONFINITE_ACTION_HELP + " Applies to each round's fine-tuning."}
    )

    def __post_init__(self):
        from ...utils.finite import check_nonfinite_action
        from ...utils.validation import check_finite_fields, check_number

        check_finite_fields(self)  # every float, the Trainer's own (max_grad_norm, adam_epsilon, ...) included
        check_nonfinite_action(self.nonfinite_action)

        self.resume_allow_changes = normalize_allow_changes(self.resume_allow_changes)

        # types and ranges first, so a YAML list/string fails here and not inside a comparison or the Trainer
        for name in ("temperature", "temperature_end", "elite_quantile", "elite_quantile_end", "reward_threshold",
                     "sft_mix_ratio", "kl_coef", "entropy_coef", "min_entropy", "min_distinct_n", "top_p",
                     "learning_rate"):  # fmt: skip
            check_number(self, name, optional=True)
        check_number(self, "max_completion_length", low=1, integer=True)
        check_number(self, "per_device_train_batch_size", low=1, integer=True)
        check_number(self, "num_generations", integer=True)  # the range checks below say why
        check_number(self, "num_rounds", integer=True)
        check_number(self, "elite_top_k", low=1, integer=True, optional=True)
        check_number(self, "prompts_per_round", low=1, integer=True, optional=True)
        check_number(self, "generation_chunk_size", low=1, integer=True)
        if self.generation_batch_size is not None:
            raise ValueError(
                f"CEMConfig(generation_batch_size={self.generation_batch_size}): the generate() chunk size is now "
                "called `generation_chunk_size` (as in PPOConfig). In TRL, generation_batch_size means completions per "
                "generation step; a CEM round samples prompts_per_round x num_generations completions, so set "
                "`prompts_per_round` for that."
            )
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: CEM selects elites among N answers per prompt, so N must "
                "be >= 2 (with N=1 there is nothing to choose from)."
            )
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {self.num_rounds}")
        if self.elite_top_k is None and self.elite_quantile is None and self.reward_threshold is None:
            raise ValueError("Set at least one elite rule: elite_top_k, elite_quantile or reward_threshold.")
        if self.elite_top_k is not None and self.elite_top_k >= self.num_generations and not self.dedupe:
            raise ValueError(
                f"elite_top_k={self.elite_top_k} keeps every one of num_generations={self.num_generations} answers: "
                "no selection happens."
            )
        for name in ("elite_quantile", "elite_quantile_end"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.elite_quantile_end is not None and self.elite_quantile is None:
            raise ValueError("elite_quantile_end needs elite_quantile (the schedule's start).")
        if self.temperature <= 0 or (self.temperature_end is not None and self.temperature_end <= 0):
            raise ValueError("Sampling temperatures must be > 0.")
        if self.sft_mix_ratio < 0 or self.kl_coef < 0 or self.entropy_coef < 0:
            raise ValueError("sft_mix_ratio, kl_coef and entropy_coef must be >= 0.")
        if self.prompts_per_round is not None and self.prompts_per_round < 1:
            raise ValueError(f"prompts_per_round must be >= 1, got {self.prompts_per_round}")
