"""CEM's logs land on one monotonic x axis (trainers/cem/log_steps.py): the rounds' SFT ``train/*`` logs and the
``cem/*`` round metrics are at the cumulative number of fine-tuning steps over rounds, not at each round trainer's
own ``global_step`` (which restarts at 0); a resumed run continues the same axis."""

import shutil

import pytest
from test_cem_loop import _args, _prompts, logging_length_reward
from transformers import TrainerCallback

from trl_extras.testbed import gold_reward_fn


class StepRecorder(TrainerCallback):
    """What a ``report_to`` integration sees: the step of every ``on_log`` and its keys."""

    def __init__(self):
        self.logs: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs or {})))


def _run(tiny_paths, tmp_path, recorder):
    from trl_extras import CEMTrainer

    # batch size 2: several optimizer steps per round, each logged (logging_steps=1)
    args = _args(tmp_path, per_device_train_batch_size=2)
    trainer = CEMTrainer(tiny_paths["policy"], logging_length_reward, args, train_dataset=_prompts(),
                         eval_dataset=_prompts("holdout", 2), eval_reward_funcs=gold_reward_fn, callbacks=[recorder])
    return trainer, trainer.train()


def _round_steps(recorder):
    return {int(logs["cem/round"]): step for step, logs in recorder.logs if "cem/round" in logs}


def _train_steps(recorder):
    return [step for step, logs in recorder.logs if "loss" in logs]


@pytest.fixture(scope="module")
def uninterrupted(tiny_paths, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cem_steps")
    recorder = StepRecorder()
    trainer, history = _run(tiny_paths, tmp, recorder)
    return tmp, recorder, history


def test_round_and_train_logs_are_on_one_monotonic_axis(uninterrupted):
    _, recorder, history = uninterrupted
    steps = [h["train_steps"] for h in history]
    assert len(steps) == 2 and all(s >= 2 for s in steps)
    # cem/* of round r at the fine-tuning steps of rounds 0..r (old code: each at its round trainer's own step)
    assert _round_steps(recorder) == {0: steps[0], 1: steps[0] + steps[1]}
    # the SFT loss points of round 1 follow round 0's instead of restarting at 1
    assert _train_steps(recorder) == list(range(1, steps[0] + steps[1] + 1))
    on_log_steps = [step for step, _ in recorder.logs]
    assert on_log_steps == sorted(on_log_steps)


def test_a_resumed_run_continues_the_axis(uninterrupted, tiny_paths):
    tmp, first, history = uninterrupted
    shutil.rmtree(tmp / "cem" / "round_1")  # as if the run had been stopped during round 1
    recorder = StepRecorder()
    trainer, resumed = _run(tiny_paths, tmp, recorder)
    assert [r.index for r in trainer.rounds] == [1]  # round 0 was loaded, not redone
    steps = [h["train_steps"] for h in history]
    assert resumed[1]["train_steps"] == steps[1]  # the same round (seeded per round)
    assert _round_steps(recorder) == {1: steps[0] + steps[1]} == {1: _round_steps(first)[1]}
    assert _train_steps(recorder) == list(range(steps[0] + 1, steps[0] + steps[1] + 1))


def test_offset_moves_only_what_is_logged():
    """The mixin shifts the step that logs see and restores the trainer's own step (training keeps counting it)."""
    from transformers import TrainerState

    from trl_extras.trainers.cem.log_steps import StepOffsetLogMixin, fine_tune_steps, state_at_step

    seen = []

    class Base:
        def log(self, logs, start_time=None):
            seen.append(self.state.global_step)

    class Logged(StepOffsetLogMixin, Base):
        pass

    t = Logged()
    t.state = TrainerState(global_step=3)
    t.log({})
    t.log_step_offset = 10
    t.log({})
    assert seen == [3, 13] and t.state.global_step == 3
    assert fine_tune_steps([{"train_steps": 4}, {"stopped": "min_entropy"}, {"train_steps": 2}]) == 6
    shifted = state_at_step(t.state, 7)
    assert shifted.global_step == 7 and t.state.global_step == 3
