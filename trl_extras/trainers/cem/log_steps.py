"""The x axis of CEM's logs on the dashboards: the cumulative number of fine-tuning optimizer steps over rounds.

``report_to`` integrations plot each ``on_log`` at ``state.global_step`` (TensorBoard's ``add_scalar`` step; W&B's and
trackio's ``train/global_step`` step metric). Each CEM round fine-tunes with a fresh SFT trainer whose
``global_step`` starts at 0, so without an offset every round's ``train/*`` points and its ``cem/*`` point land on the
same small x values, on top of the previous rounds'. A TRL user reads ``train/global_step`` as "optimizer steps taken
so far in this run": the rounds' fine-tuning steps, counted across rounds. On that axis the rounds' SFT curves
continue each other and round ``r``'s ``cem/*`` point sits where its fine-tuning ended (the round index would put
``cem/*`` and the SFT curves on two scales in one W&B run; it stays available as the ``cem/round`` metric for a
custom x axis). The count is read from the round history, which a resumed run reloads from the rounds'
``metrics.json``: a resume continues the same axis.
"""

from __future__ import annotations

import copy


def fine_tune_steps(history: list[dict]) -> int:
    """Optimizer steps of every round fine-tuning in ``history`` (the rounds' ``train_steps``; a round that did not
    fine-tune, with no elite or stopped by a diversity floor, has none and counts 0)."""
    return sum(int(h.get("train_steps") or 0) for h in history)


def state_at_step(state, step: int):
    """A copy of a ``transformers.TrainerState`` at ``global_step=step`` (the trainer's own state is not touched)."""
    shifted = copy.copy(state)
    shifted.global_step = int(step)
    return shifted


class StepOffsetLogMixin:
    """Mix into a ``transformers.Trainer`` subclass (before the Trainer): its logs (``log_history`` and every
    callback's ``on_log``, hence ``report_to``) are at ``global_step + log_step_offset``. Training itself (max_steps,
    schedules, checkpoints) keeps the trainer's own step; only what is logged moves."""

    log_step_offset: int = 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        offset = self.log_step_offset
        if not offset:
            return super().log(logs, start_time)
        self.state.global_step += offset
        try:
            super().log(logs, start_time)
        finally:
            self.state.global_step -= offset
