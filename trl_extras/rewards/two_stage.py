"""Two-stage reward modelling: pretrain on many cheap ("dirty") pairs, then fine-tune on few clean pairs.

The article's pipeline and Anthropic's preference-model pretraining (Askell et al. 2021, "A General Language
Assistant as a Laboratory for Alignment": PMP then fine-tuning gains ~0.10 accuracy with < 10k fine-tuning pairs).
Unlike other frameworks (ms-swift#9239, OpenRLHF ``init_value_head=True``) the score head and any LoRA adapter
carry over from stage 1 to stage 2: it is the same model object trained twice.

Design: :class:`TwoStageRewardTrainer` *is* a TRL ``RewardTrainer`` (same model loading, PEFT, quantization,
dataset preparation, loss and metrics). ``train()`` runs ``Trainer.train`` twice, swapping the training dataset and
the arguments per stage:

- stage 1: ``pretrain_dataset`` with ``pretrain_num_train_epochs`` / ``pretrain_max_steps`` /
  ``pretrain_learning_rate`` (``None``: ``learning_rate``), checkpoints under ``<output_dir>/stage1``;
- stage 2: ``train_dataset`` with the usual ``num_train_epochs`` / ``max_steps`` / ``learning_rate``,
  checkpoints under ``<output_dir>``.

The optimizer and LR scheduler are created afresh for each stage (warm-up and decay restart, Adam moments do not
leak from dirty to clean data); ``state.global_step`` counts steps *within* the stage. After each stage the model
is evaluated on the clean ``eval_dataset``; after stage 1 the model is saved to ``<output_dir>/stage1`` with a
``two_stage.json`` marker (which also holds stage 1's log history and evaluation).

One naming scheme: a stage's metrics are ``stage1/loss``, ``stage1/accuracy``, … for training and
``eval_stage1/loss`` … for evaluation, in the log history, the ``report_to`` integrations (as ``train/stage1/loss``
and ``eval/stage1/loss``: each stage's curves have their own tag and step axis) and in what ``evaluate()`` returns
during a stage (the post-stage evaluations in ``trainer.stage_metrics`` too). That dict also keeps the plain
``eval_loss``, ``eval_accuracy``, … which the Trainer's ``metric_for_best_model`` and callbacks such as
``EarlyStoppingCallback`` look up (``metric_for_best_model="accuracy"`` as for TRL's ``RewardTrainer``).
``evaluate()`` called outside a stage (after ``train()``) logs and returns the plain names. Log entries carry a
``stage`` field; ``trainer.state.log_history`` holds both stages' entries after ``train()``.

Resuming: ``train(resume_from_checkpoint=True)`` continues the latest stage found on disk: a stage-2 checkpoint in
``output_dir``, else a finished stage 1 (start stage 2 from its weights), else the latest stage-1 checkpoint. A
path resumes the stage its checkpoint belongs to (``two_stage.json`` in every checkpoint records it); the path of
a finished stage-1 model (``<dir>/stage1``, also another run's) starts stage 2 from it, skipping stage 1.
"""

from __future__ import annotations

import copy
import json
import os
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field

from transformers.trainer_utils import get_last_checkpoint
from trl import RewardConfig, RewardTrainer

from ..modeling.quantization import keep_4bit_layers_differentiable
from ..utils.finite import NONFINITE_ACTION_HELP, NonFiniteGuardMixin
from ..utils.offline import NoTelemetryMixin

STAGE_FILE = "two_stage.json"


@dataclass
class TwoStageRewardConfig(RewardConfig):
    """``RewardConfig`` plus the stage-1 (pretraining on dirty pairs) schedule.

    The inherited ``num_train_epochs``, ``max_steps`` and ``learning_rate`` apply to stage 2 (clean pairs).
    """

    pretrain_num_train_epochs: float = field(
        default=1.0,
        metadata={"help": "Epochs over `pretrain_dataset` in stage 1 (ignored when pretrain_max_steps > 0)."},
    )
    pretrain_max_steps: int = field(
        default=-1, metadata={"help": "Optimizer steps of stage 1; -1 uses pretrain_num_train_epochs."}
    )
    pretrain_learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate of stage 1; None uses `learning_rate`."}
    )
    pretrain_output_subdir: str = field(
        default="stage1",
        metadata={"help": "Sub-directory of output_dir for stage-1 checkpoints and the stage-1 model."},
    )
    eval_after_each_stage: bool = field(
        default=True, metadata={"help": "Evaluate on `eval_dataset` (clean pairs) at the end of each stage."}
    )

    nonfinite_action: str = field(default="error", metadata={"help": NONFINITE_ACTION_HELP})

    def __post_init__(self):
        from ..utils.finite import check_nonfinite_action
        from ..utils.validation import check_finite_fields

        check_finite_fields(self)  # every float, the Trainer's own (max_grad_norm, adam_epsilon, ...) included
        check_nonfinite_action(self.nonfinite_action)
        super().__post_init__()
        if self.pretrain_max_steps <= 0 and self.pretrain_num_train_epochs <= 0:
            raise ValueError("Stage 1 needs pretrain_max_steps > 0 or pretrain_num_train_epochs > 0.")
        if self.pretrain_learning_rate is not None and self.pretrain_learning_rate <= 0:
            raise ValueError(f"pretrain_learning_rate must be > 0, got {self.pretrain_learning_rate}")
        if not self.pretrain_output_subdir or os.path.isabs(self.pretrain_output_subdir):
            raise ValueError("pretrain_output_subdir must be a non-empty relative path.")


def stage_prefixed(logs: dict, stage: int) -> dict:
    """Logs of one stage with per-stage keys: ``loss`` -> ``stage1/loss``, ``eval_loss`` -> ``eval_stage1/loss``.

    ``epoch`` stays as is (it is stage-local already); a ``stage`` field is added.
    """
    out = {}
    for key, value in logs.items():
        if key == "epoch":
            out[key] = value
        elif key.startswith("eval_"):
            out[f"eval_stage{stage}/{key[len('eval_') :]}"] = value
        else:
            out[f"stage{stage}/{key}"] = value
    out["stage"] = stage
    return out


def read_stage_marker(path: str) -> dict | None:
    file = os.path.join(path, STAGE_FILE)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        return json.load(f)


class TwoStageRewardTrainer(NoTelemetryMixin, NonFiniteGuardMixin, RewardTrainer):
    """A ``RewardTrainer`` whose ``train()`` runs stage 1 on ``pretrain_dataset``, then stage 2 on ``train_dataset``.

    Args:
        model: as for ``RewardTrainer`` (path, sequence-classification model, or ``PeftModel``).
        args: a :class:`TwoStageRewardConfig`.
        train_dataset: the clean pairs of stage 2.
        pretrain_dataset: the dirty pairs of stage 1 (same formats as ``train_dataset``).
        eval_dataset: clean evaluation pairs, evaluated after each stage.
        **kwargs: everything else ``RewardTrainer`` accepts (``processing_class``, ``peft_config``,
            ``quantization_config``, ``callbacks``, ``compute_metrics``, ...). ``optimizers`` must be left unset:
            each stage builds its own optimizer and scheduler from ``args``.
    """

    _tag_names = ["trl", "reward-trainer", "trl-extras", "two-stage-reward"]
    _name = "Two-stage Reward"
    _paper = {
        "title": "A General Language Assistant as a Laboratory for Alignment",
        "id": "2112.00861",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{askell2021general,
                title   = {{A General Language Assistant as a Laboratory for Alignment}},
                author  = {Amanda Askell and Yuntao Bai and Anna Chen and Dawn Drain and Deep Ganguli and Tom Henighan and Andy Jones and Nicholas Joseph and Ben Mann and Nova DasSarma and others},
                year    = 2021,
                journal = {arXiv preprint arXiv:2112.00861},
            }"""),
    }

    def __init__(
        self,
        model,
        args: TwoStageRewardConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        pretrain_dataset=None,
        **kwargs,
    ):
        if pretrain_dataset is None:
            raise ValueError("TwoStageRewardTrainer needs `pretrain_dataset` (the stage-1 pairs).")
        from .pairs import validate_preference_dataset

        validate_preference_dataset(pretrain_dataset, "pretrain_dataset")
        validate_preference_dataset(train_dataset, "train_dataset")
        validate_preference_dataset(eval_dataset, "eval_dataset")
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers is not None and any(o is not None for o in optimizers):
            raise ValueError(
                "TwoStageRewardTrainer creates a fresh optimizer and scheduler for each stage from `args`; do not pass "
                "`optimizers` (use `optimizer_cls_and_kwargs` to choose the optimizer class)."
            )
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = TwoStageRewardConfig(f"{os.path.basename(str(name).rstrip('/')) or 'model'}-TwoStageReward")
        if not isinstance(args, TwoStageRewardConfig):
            raise TypeError(f"`args` must be a TwoStageRewardConfig, got {type(args).__name__}.")
        self._stage: int | None = None
        self._stage2_args: TwoStageRewardConfig | None = None  # the user's args while a stage runs with its own
        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        keep_4bit_layers_differentiable(self.model)  # stage evaluations run no-grad forwards between training steps
        for name, data in (("pretrain_dataset", pretrain_dataset), ("train_dataset", train_dataset),
                           ("eval_dataset", eval_dataset)):  # as the model reads them: distinct texts, same tokens?
            validate_preference_dataset(data, name, processing_class=self.processing_class)
        self.pretrain_dataset = self._prepare_dataset(pretrain_dataset, self.processing_class, self.args, "pretrain")
        if hasattr(self.pretrain_dataset, "__len__") and len(self.pretrain_dataset) == 0:
            raise ValueError("`pretrain_dataset` is empty after preparation (all pairs longer than max_length?).")
        self.finetune_dataset = self.train_dataset
        self.stage_metrics: dict[str, dict] = {}
        self.stage_log_history: dict[str, list] = {}
        self.stage_train_output: dict[str, object] = {}

    # ----------------------------------------------------------------------------------------------- set-up
    @property
    def stage1_dir(self) -> str:
        return os.path.join(self._base_args.output_dir, self._base_args.pretrain_output_subdir)

    @property
    def _base_args(self) -> TwoStageRewardConfig:
        return self._stage2_args or self.args

    def _args_for_stage(self, stage: int) -> TwoStageRewardConfig:
        base = self._base_args
        if stage == 2:
            return base
        # A shallow copy: the same accelerator/deepspeed objects, only the schedule and output_dir differ.
        args = copy.copy(base)
        args.num_train_epochs = base.pretrain_num_train_epochs
        args.max_steps = base.pretrain_max_steps
        args.learning_rate = base.pretrain_learning_rate or base.learning_rate
        args.output_dir = self.stage1_dir
        # Stage-1 checkpoints must not be pushed over the final model's Hub repository.
        args.push_to_hub = False
        return args

    def _resolve_resume(self, resume_from_checkpoint) -> tuple[int, str | None, str | None]:
        """(stage to run first, checkpoint to resume it from, finished stage-1 directory stage 2 starts from)."""
        if resume_from_checkpoint in (None, False):
            return 1, None, None
        stage1_done = (read_stage_marker(self.stage1_dir) or {}).get("completed", False)
        if resume_from_checkpoint is True:
            last = (
                get_last_checkpoint(self._base_args.output_dir) if os.path.isdir(self._base_args.output_dir) else None
            )
            if last is not None:
                return 2, last, None
            if stage1_done:
                return 2, None, self.stage1_dir
            last1 = get_last_checkpoint(self.stage1_dir) if os.path.isdir(self.stage1_dir) else None
            if last1 is not None:
                return 1, last1, None
            raise ValueError(f"No checkpoint of either stage found under {self._base_args.output_dir}.")
        path = str(resume_from_checkpoint)
        if not os.path.isdir(path):
            raise ValueError(f"resume_from_checkpoint={path!r} is not a directory.")
        marker = read_stage_marker(path)
        if marker is not None and marker.get("completed"):  # a finished stage-1 model (this run's or another's)
            return 2, None, path
        if marker is not None:
            return int(marker["stage"]), path, None
        inside_stage1 = os.path.commonpath(
            [os.path.abspath(path), os.path.abspath(self.stage1_dir)]
        ) == os.path.abspath(self.stage1_dir)
        return (1 if inside_stage1 else 2), path, None

    # ----------------------------------------------------------------------------------------------- training
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        first_stage, checkpoint, stage1_model_dir = self._resolve_resume(resume_from_checkpoint)
        self._stage2_args = self.args
        try:
            if first_stage == 1:
                self._run_stage(1, checkpoint, trial, ignore_keys_for_eval, **kwargs)
                checkpoint = None
            else:
                self._restore_stage1_record(stage1_model_dir or self.stage1_dir)
                if stage1_model_dir is not None:
                    # Same loader Trainer uses for checkpoints: handles full weights and PEFT adapters (+ score).
                    self._load_from_checkpoint(stage1_model_dir)
            output = self._run_stage(2, checkpoint, trial, ignore_keys_for_eval, **kwargs)
        finally:
            self.args = self._stage2_args
            self.train_dataset = self.finetune_dataset
            self._stage = None
            self._stage2_args = None
        # One history for both stages (entries are stage-prefixed, their "step" is stage-local).
        self.state.log_history = self.stage_log_history.get("stage1", []) + self.stage_log_history["stage2"]
        return output

    def _run_stage(self, stage: int, checkpoint, trial, ignore_keys_for_eval, **kwargs):
        self._stage = stage
        self.args = self._args_for_stage(stage)
        self.train_dataset = self.pretrain_dataset if stage == 1 else self.finetune_dataset
        # Fresh optimizer and scheduler per stage (Trainer only creates them when unset).
        self.optimizer, self.lr_scheduler = None, None
        self._created_lr_scheduler = False
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        output = super().train(
            resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
        )
        self.stage_train_output[f"stage{stage}"] = output
        if self.eval_dataset is not None and self.args.eval_after_each_stage:
            self.stage_metrics[f"stage{stage}"] = self.evaluate()
        self.stage_log_history[f"stage{stage}"] = list(self.state.log_history)
        if stage == 1:
            self._save_stage1()
        return output

    def _save_stage1(self):
        self.save_model(self.stage1_dir)
        if self.args.should_save:
            record = {
                "stage": 1,
                "completed": True,
                "global_step": self.state.global_step,
                "eval_metrics": self.stage_metrics.get("stage1"),
                "log_history": self.stage_log_history.get("stage1", []),
            }
            with open(os.path.join(self.stage1_dir, STAGE_FILE), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)

    def _restore_stage1_record(self, directory: str):
        marker = read_stage_marker(directory) or {}
        if marker.get("completed"):
            self.stage_log_history["stage1"] = marker.get("log_history", [])
            if marker.get("eval_metrics") is not None:
                self.stage_metrics["stage1"] = marker["eval_metrics"]

    def _save_checkpoint(self, model, trial):
        self.check_finite_before_save()  # never write (nor rotate in) a checkpoint of NaN/inf weights
        super()._save_checkpoint(model, trial)
        if self._stage is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            if os.path.isdir(folder):
                with open(os.path.join(folder, STAGE_FILE), "w", encoding="utf-8") as f:
                    json.dump({"stage": self._stage, "completed": False}, f)

    # ----------------------------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # RewardTrainer.log's merge of self._metrics (same averaging), then per-stage key prefixes. `logs` is
        # updated in place with the unprefixed metrics as RewardTrainer does, so the dict `evaluate()` returns
        # (and metric_for_best_model) keeps the usual `eval_*` names.
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(val) / len(val) for key, val in self._metrics[mode].items()}
        if mode == "eval":
            metrics = {f"eval_{key}": val for key, val in metrics.items()}
        logs.update(metrics)
        self._metrics[mode].clear()
        out = stage_prefixed(logs, self._stage) if self._stage is not None else dict(logs)
        if mode == "eval" and self._stage is not None:
            # evaluate() returns `logs`: it carries the logged (stage-prefixed) names as well, so a key read in the
            # log history is found in what evaluate() returns, and stage_metrics hold both
            logs.update({key: value for key, value in out.items() if key.startswith("eval_stage")})
        super(RewardTrainer, self).log(out, start_time)
