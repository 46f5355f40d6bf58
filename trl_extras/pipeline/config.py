"""Configuration of the end-to-end alignment pipeline (``trl-extras pipeline`` and ``trl-extras demo``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..utils.resume import RESUME_ALLOW_CHANGES_HELP

#: Default of ``gold_reward`` / ``sft_reward``: the testbed's rewards on a testbed run, see ``check_models``.
AUTO = "auto"
#: The dataset fields: a run is a testbed run when none is the user's data ("testbed", unset, or None = skip).
DATASET_FIELDS = ("prompt_dataset", "eval_prompt_dataset", "sft_dataset", "dirty_pairs_dataset", "clean_pairs_dataset",
                  "real_pairs_dataset")  # fmt: skip
_DATA_AUTO = ("'testbed', your data (a Hub id, folder or file, `name[:split]`), or unset ('auto'): the testbed's "
              "when no dataset is your own, else an error naming it.")


def pipeline_stages():
    """The registered stages (``trl_extras.pipeline.stages.PIPELINE_STAGES``), in pipeline order.

    Imported when called: the stages module imports this one."""
    from .stages import PIPELINE_STAGES

    return PIPELINE_STAGES


@dataclass
class PipelineConfig:
    """Every stage of the article's pipeline: SFT (reward early stopping) → reward model (dirty→clean, easy-pair
    filtering) → reward ensemble → CEM → PPO → DPO on synthetic pairs → side-by-side evaluation.

    Datasets are ``"testbed"`` (the built-in sort-the-digits task) or a ``datasets`` spec ``"name_or_path[:split]"``
    (a local JSON/JSONL/Parquet file or directory works too). Stages whose ``result.json`` exists are skipped, so
    a crashed run resumes where it stopped.
    """

    output_dir: str = field(default="outputs/pipeline", metadata={"help": "Root directory of every stage's outputs."})
    stages: list[str] = field(
        default_factory=lambda: list(pipeline_stages()),
        metadata={"help": "Stages to run, in order. Default: every registered stage "
                  "(trl_extras.pipeline.stages.PIPELINE_STAGES) in pipeline order, sft first, evaluate last."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Re-run stages whose outputs already exist."})
    resume_allow_changes: list[str] | None = field(default=None, metadata={"help": RESUME_ALLOW_CHANGES_HELP})
    seed: int = field(default=0, metadata={"help": "Global seed."})
    # ----- models
    policy_model: str | None = field(
        default=None,
        metadata={
            "help": "Starting (pretrained) policy path or hub id; None on the testbed builds the tiny kit policy; "
            "'testbed:smollm2' (or 'smollm2') is SmolLM2-135M-Instruct offline (trl_extras.testbed.smollm2_path)."
        },
    )
    reward_base_model: str | None = field(
        default=None, metadata={"help": "Reward-model initialisation; None uses the SFT model (RM = SFT + new head)."}
    )
    # ----- data
    task: str = field(
        default="sort_digits",
        metadata={"help": "Task of the 'testbed' datasets: sort_digits or sort_hard (tiny models; sort_hard's SFT "
                  "demonstrations have a systematic wrong mode that RL can fix) or arithmetic (real chat models)."},
    )
    prompt_dataset: str = field(default=AUTO, metadata={"help": "Train prompts (`prompt` column). " + _DATA_AUTO})
    eval_prompt_dataset: str = field(default=AUTO, metadata={"help": "Holdout prompts for evaluation. " + _DATA_AUTO})
    sft_dataset: str = field(default=AUTO, metadata={"help": "SFT prompt/completion data. " + _DATA_AUTO})
    dirty_pairs_dataset: str = field(default=AUTO, metadata={"help": "Many cheap preference pairs (stage 1). " + _DATA_AUTO})
    clean_pairs_dataset: str = field(default=AUTO, metadata={"help": "Clean preference pairs (stage 2). " + _DATA_AUTO})
    real_pairs_dataset: str | None = field(
        default=AUTO, metadata={"help": "Real pairs for the second DPO stage (None skips it). " + _DATA_AUTO}
    )
    gold_reward: str | None = field(
        default=AUTO,
        metadata={
            "help": "Gold reward, for measuring only: 'gold' (the testbed task's), an import path `module:function`, "
            "a reward-model path, or None (real tasks: no gold). 'auto': the task's gold on a testbed run (every "
            "dataset 'testbed'), None with your own data. An import path runs that module's code (a recipe can run "
            "code, like any Python config -- use trusted recipes)."
        },
    )
    sft_reward: str | None = field(
        default=AUTO,
        metadata={
            "help": "Reward that picks the SFT checkpoint (early stopping): 'heuristic' / 'gold' (the testbed task's), "
            "an import path `module:function` or a reward-model path; None selects by eval_loss. 'auto': the "
            "testbed's cheap dirty heuristic on a testbed run (no RM exists before SFT); with your own data it is "
            "required (a path, module:function, or None). An import path runs that module's code."
        },
    )
    num_eval_prompts: int = field(default=256, metadata={"help": "Holdout prompts used by evaluations."})
    num_train_prompts: int = field(default=512, metadata={"help": "Train prompts used by CEM, PPO and DPO."})
    num_dirty_pairs: int = field(default=1000, metadata={"help": "Testbed: dirty pairs to generate."})
    num_clean_pairs: int = field(default=1000, metadata={"help": "Testbed: clean pairs to generate."})
    num_sft_examples: int = field(default=2000, metadata={"help": "Testbed: SFT examples (high-quality subset)."})
    num_rm_test_pairs: int = field(default=1000, metadata={"help": "Testbed: held-out gold-labelled pairs (RM accuracy)."})
    # ----- generation
    max_prompt_length: int = field(default=64, metadata={"help": "Prompt tokens kept (from the left)."})
    max_completion_length: int = field(default=24, metadata={"help": "Generated tokens at most."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature everywhere."})
    eval_temperature: float | None = field(
        default=None,
        metadata={"help": "Temperature of the final evaluation's samples (None: `temperature`; 0: greedy). KL is at T=1 when 0."},
    )
    train_batch_size: int = field(default=32, metadata={"help": "Per-device batch of SFT, CEM fine-tuning and DPO."})
    # ----- per-stage budgets
    sft_max_steps: int = field(default=40, metadata={"help": "SFT optimizer steps."})
    sft_eval_steps: int = field(default=10, metadata={"help": "Evaluate (and score with the reward) every N steps."})
    sft_learning_rate: float = field(default=5e-4, metadata={"help": "SFT learning rate."})
    sft_patience: int = field(default=3, metadata={"help": "Reward early-stopping patience (evaluations)."})
    rm_learning_rate: float = field(default=1e-3, metadata={"help": "Reward-model learning rate (both stages)."})
    rm_batch_size: int = field(default=64, metadata={"help": "Reward-model batch size (pairs)."})
    rm_epochs: float = field(default=2.0, metadata={"help": "Epochs over the clean pairs (stage 2)."})
    rm_pretrain_epochs: float = field(default=1.0, metadata={"help": "Epochs over the dirty pairs (stage 1)."})
    drop_easiest: float = field(default=0.2, metadata={"help": "Easy-pair filtering: drop this share of dirty pairs."})
    rm_clean_only_baseline: bool = field(
        default=True,
        metadata={"help": "Reward stage: also train the clean-only RM, a comparison row of the report that no later "
                  "stage uses (False saves one RM training on slow hardware)."},
    )
    ensemble_size: int = field(default=3, metadata={"help": "Reward-ensemble members (>= 2)."})
    ensemble_penalty: str = field(default="variance", metadata={"help": "variance | std | min."})
    ensemble_coef: float = field(default=1.0, metadata={"help": "λ of the uncertainty penalty (on standardized rewards)."})
    cem_rounds: int = field(default=3, metadata={"help": "CEM rounds."})
    cem_num_generations: int = field(default=8, metadata={"help": "CEM samples per prompt (N)."})
    cem_prompts_per_round: int = field(default=128, metadata={"help": "CEM prompts per round."})
    cem_sft_mix_ratio: float = field(default=0.25, metadata={"help": "CEM diversity control: SFT rows mixed in."})
    ppo_max_steps: int = field(default=40, metadata={"help": "PPO steps (rollout batches)."})
    ppo_batch_size: int = field(default=64, metadata={"help": "PPO rollouts per step."})
    ppo_learning_rate: float = field(default=3e-4, metadata={"help": "PPO policy learning rate."})
    ppo_num_epochs: int = field(default=4, metadata={"help": "PPO passes over each rollout batch (num_ppo_epochs)."})
    ppo_kl_coef: float = field(default=0.2, metadata={"help": "β of the exact per-token KL penalty."})
    ppo_trajectory_points: int = field(
        default=8,
        metadata={"help": "Measurements of gold, proxy and KL to SFT on holdout prompts during PPO (the reward-vs-KL "
                  "plot), evenly spaced, plus one before training; 0: none."},
    )
    ppo_single_kl_coef: float = field(
        default=0.0,
        metadata={"help": "ppo_single stage: β of PPO against one fixed reward model (0: nothing holds the policy near "
                  "SFT: the over-optimization baseline)."},
    )
    refresh_every: int = field(
        default=10, metadata={"help": "ppo_refresh stage: PPO steps between reward-model refreshes on the policy's answers."}
    )
    refresh_num_pairs: int = field(
        default=64, metadata={"help": "ppo_refresh stage: policy-vs-SFT comparisons labelled by the gold judge per refresh."}
    )
    refresh_flip_rate: float = field(
        default=0.1, metadata={"help": "ppo_refresh stage: share of the judge's labels flipped (label noise of AI trainers)."}
    )
    ppo_reward: str = field(
        default="ensemble",
        metadata={"help": "What PPO optimizes: 'ensemble' (the penalized reward ensemble) or 'gold' (the gold reward: the "
                  "upper bound of what RL can gain on the task)."},
    )
    dpo_num_generations: int = field(default=4, metadata={"help": "Samples per prompt for synthetic DPO pairs."})
    dpo_max_steps: int = field(default=20, metadata={"help": "DPO steps per stage."})
    dpo_learning_rate: float = field(default=2e-4, metadata={"help": "DPO learning rate."})
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO β."})
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even when CUDA is available."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (CUDA)."})

    def __post_init__(self):
        from ..utils.resume import normalize_allow_changes

        self.resume_allow_changes = normalize_allow_changes(self.resume_allow_changes)
        known = pipeline_stages()
        unknown = [s for s in self.stages if s not in known]
        if unknown:
            raise ValueError(f"Unknown stages {unknown}; choose from {tuple(known)}.")
        from ..utils.validation import check_number

        for name in ("num_eval_prompts", "num_train_prompts", "num_dirty_pairs", "num_clean_pairs", "num_sft_examples",
                     "max_prompt_length", "max_completion_length", "sft_max_steps", "sft_eval_steps", "rm_batch_size",
                     "cem_rounds", "cem_num_generations", "cem_prompts_per_round", "ppo_max_steps", "ppo_batch_size",
                     "dpo_num_generations", "dpo_max_steps", "sft_patience", "num_rm_test_pairs", "train_batch_size",
                     "ppo_num_epochs", "refresh_every", "refresh_num_pairs"):  # fmt: skip
            check_number(self, name, low=1, integer=True)
        check_number(self, "ensemble_size", integer=True)
        check_number(self, "ppo_trajectory_points", low=0, integer=True)
        check_number(self, "temperature", low=0, low_open=True)
        if self.eval_temperature is not None:
            check_number(self, "eval_temperature", low=0)
        check_number(self, "drop_easiest", low=0, high=1, high_open=True)
        check_number(self, "cem_sft_mix_ratio", low=0)
        check_number(self, "ppo_kl_coef", low=0)
        check_number(self, "ppo_single_kl_coef", low=0)
        check_number(self, "refresh_flip_rate", low=0, high=0.5)
        for name in ("sft_learning_rate", "rm_learning_rate", "ppo_learning_rate", "dpo_learning_rate", "rm_epochs",
                     "rm_pretrain_epochs", "dpo_beta"):  # fmt: skip
            check_number(self, name, low=0, low_open=True)
        from ..testbed import TASKS

        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if self.ppo_reward not in ("ensemble", "gold"):
            raise ValueError(f"ppo_reward must be 'ensemble' or 'gold', got {self.ppo_reward!r}.")
        if self.ensemble_size < 2:
            raise ValueError("ensemble_size must be >= 2 (an ensemble of one has no disagreement to penalize).")
        self.resolve_auto_datasets()  # here, so settings fingerprints never see 'auto' on a testbed run
        self.resolve_auto_rewards()

    def resolve_auto_datasets(self) -> None:
        """Unset ('auto') datasets → 'testbed' when no dataset is the user's (a testbed run, spelled as before so
        earlier runs keep their fingerprints); with the user's data they stay 'auto' and :meth:`check_datasets`
        refuses them (the testbed's pairs would otherwise train the user's reward model without a word)."""
        if not self.user_datasets():
            for name in DATASET_FIELDS:
                if getattr(self, name) == AUTO:
                    setattr(self, name, "testbed")

    def check_datasets(self) -> None:
        unset = [n for n in DATASET_FIELDS if getattr(self, n) == AUTO]
        if unset:
            raise ValueError(
                f"With your own data {self.user_datasets()} name every dataset: {unset} unset. Give your data (a Hub "
                "id, folder or file), or 'testbed' for the testbed's (real_pairs_dataset: null skips DPO's second "
                "stage)."
            )

    def resolve_auto_rewards(self) -> None:
        """'auto' rewards → the testbed task's, spelled as import paths of its module (as the defaults were before
        'auto', so earlier runs keep their fingerprints), on a testbed run; gold → None with the user's data (sft
        stays 'auto' there: :meth:`check_models` refuses it when the SFT stage runs)."""
        module = "trl_extras.testbed.arithmetic" if self.task == "arithmetic" else "trl_extras.testbed"
        if self.gold_reward == AUTO:
            self.gold_reward = f"{module}:gold_reward_fn" if self.testbed_run else None
        if self.sft_reward == AUTO and self.testbed_run:
            self.sft_reward = f"{module}:heuristic_reward_fn"

    @property
    def testbed_run(self) -> bool:
        """Every dataset is the testbed's: only then do the testbed's policy and rewards fill in what is unset."""
        return not self.user_datasets()

    def user_datasets(self) -> dict:
        return {n: getattr(self, n) for n in DATASET_FIELDS if getattr(self, n) not in ("testbed", None, AUTO)}

    def check_models(self) -> None:
        """Called when the run starts (after `--model_name_or_path` has been merged into `policy_model`): resolves
        testbed model names and the 'auto' rewards; with the user's own data nothing falls back to the testbed."""
        if self.policy_model is None and not self.testbed_run:
            raise ValueError(f"policy_model (or --model_name_or_path) is required with your own data "
                             f"{self.user_datasets()}: the testbed's tiny policy stands in only on a testbed run.")  # fmt: skip
        self.check_datasets()
        from ..testbed.names import testbed_model_path

        for name in ("policy_model", "reward_base_model"):
            value = getattr(self, name)
            if value == "smollm2":  # the older spelling of testbed:smollm2
                value = "testbed:smollm2"
            if isinstance(value, str) and value.lower() in ("testbed", "testbed:tiny"):
                value = None  # the task's own starting policy (seeded, per task), as when unset
            setattr(self, name, testbed_model_path(value))  # testbed:smollm2 -> converted once, cached
        self.resolve_auto_rewards()
        if self.sft_reward == AUTO:
            if "sft" in self.stages:
                raise ValueError(
                    f"sft_reward is required with your own data {self.user_datasets()} (the testbed's heuristic "
                    "would pick your SFT checkpoint): a reward-model path, an import path module:function, or null "
                    "to pick the checkpoint by eval_loss."
                )
            else:
                self.sft_reward = None
        if self.ppo_reward == "gold" and self.gold_reward is None:
            raise ValueError("ppo_reward='gold' needs gold_reward (an import path of the gold reward function).")
