"""The record of one CEM round: what each step of :meth:`CEMTrainer._train` reads and fills in.

A round is sample → score → select → fine-tune → evaluate → save (see
:class:`~trl_extras.trainers.cem.trainer.CEMTrainer`); each step is a method of the trainer that takes this record
and adds its part, so the data of a round flows through one object rather than through trainer attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CEMRound:
    """The state of CEM round ``index``, filled in step by step.

    Attributes:
        index: the round, 0-based like the ``round_{index}`` folders.
        directory: ``output_dir/round_{index}``.
        temperature: the sampling temperature of this round (scheduled, see ``temperature_end``).
        quantile: the elite quantile of this round (scheduled, see ``elite_quantile_end``); None when unused.
        columns: the round's samples, one list per column and one row per sample (``prompt``, ``completion``,
            ``group``, ``token_entropy``, ... then ``reward`` after scoring and ``elite`` after selection): what is
            saved under ``generations``.
        reused: the samples came from the saved generations of an interrupted run.
        reward_logs: means of the values the reward functions logged while scoring this round (empty when the
            scores were reused).
        sample_metrics: measured on the samples (reward, entropy, diversity, elite count, ...), with the reward
            logs as ``reward_log/<name>``.
        stop_reason: set when a diversity floor (``min_entropy``, ``min_distinct_n``) stops the run before this
            round's fine-tuning.
        fine_tune_metrics: rows fine-tuned on and the fine-tuning's loss/steps (empty when stopped before it).
        eval_metrics: ``eval_*`` metrics of the round's model on the eval prompts (empty without them).
    """

    index: int
    directory: Path
    temperature: float
    quantile: float | None
    columns: dict[str, list] = field(default_factory=dict)
    reused: bool = False
    reward_logs: dict[str, float] = field(default_factory=dict)
    sample_metrics: dict = field(default_factory=dict)
    stop_reason: str | None = None
    fine_tune_metrics: dict = field(default_factory=dict)
    eval_metrics: dict = field(default_factory=dict)

    @property
    def generations_path(self) -> Path:
        """Where the round's samples (and then their scores and elite mask) are saved."""
        return self.directory / "generations"

    @property
    def elite(self) -> list[bool]:
        """The selected (elite) mask, one entry per sample; empty before selection."""
        return self.columns.get("elite", [])

    def metrics(self) -> dict:
        """The round's entry of ``cem_history.json`` (and its ``metrics.json`` / ``stopped.json``)."""
        metrics = {"round": self.index, "temperature": self.temperature, "elite_quantile": self.quantile}
        metrics.update(self.sample_metrics)
        if self.stop_reason is not None:
            metrics["stopped"] = self.stop_reason
        metrics.update(self.fine_tune_metrics)
        metrics.update(self.eval_metrics)
        return metrics
