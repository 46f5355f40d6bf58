"""PPOSchedule (trl_extras.trainers.ppo.schedule): when PPO rolls out, which rows each micro-batch trains on, the
'dapo' token counts, the approx-KL early stop, and resume mid-batch. Pure python/torch, no trainer: a small driver
loop below plays the trainer's part (``_prepare_inputs`` + ``training_step``)."""

from __future__ import annotations

import io

import pytest
import torch

from trl_extras.trainers.ppo.schedule import PPOSchedule

LAYOUTS = [  # (per_device_batch_size, gradient_accumulation_steps, num_mini_batches, num_ppo_epochs)
    (2, 1, 1, 1),
    (2, 2, 3, 3),
    (3, 1, 4, 2),
    (1, 4, 1, 4),
]


def _schedule(bs, ga, nmb, epochs, seed=0, target=None) -> PPOSchedule:
    return PPOSchedule(steps_per_generation=ga * nmb, num_ppo_epochs=epochs, gradient_accumulation_steps=ga,
                       per_device_batch_size=bs, num_mini_batches=nmb, seed=seed, kl_early_stop_target=target)


def _mask(n: int, T: int = 7, seed: int = 1) -> torch.Tensor:
    """``(n, T)`` right-padded completion mask with lengths 1..T, distinct enough that minibatch counts differ."""
    lengths = torch.randint(1, T + 1, (n,), generator=torch.Generator().manual_seed(seed))
    return (torch.arange(T)[None, :] < lengths[:, None]).long()


def _drive(schedule: PPOSchedule, steps: int, kl=lambda step: 0.0, masks=None):
    """Play ``steps`` micro-steps the way the trainer does; returns one record per micro-step."""
    records = []
    for _ in range(steps):
        step = schedule.step
        if schedule.skip_step():
            schedule.end_step()
            records.append({"step": step, "skipped": True, "rollout": False})
            continue
        rollout = schedule.rollout_due()
        if rollout:
            mask = masks(step) if masks else _mask(schedule.rows_per_batch)
            schedule.start_batch(mask)
        rows = schedule.micro_batch_rows().clone()
        tokens = float(schedule.num_items_in_batch())
        schedule.record_approx_kl(torch.tensor(kl(step)))
        approx, stop = schedule.end_step()
        records.append({"step": step, "skipped": False, "rollout": rollout, "rows": rows, "tokens": tokens,
                        "epoch": None, "approx_kl": approx, "early_stop": stop})  # fmt: skip
    return records


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_row_is_used_exactly_once_per_epoch(layout):
    bs, ga, nmb, epochs = layout
    schedule = _schedule(*layout)
    records = _drive(schedule, 2 * schedule.cycle_length)
    n = schedule.rows_per_batch
    per_epoch = schedule.steps_per_generation
    for start in range(0, len(records), per_epoch):
        rows = torch.cat([r["rows"] for r in records[start : start + per_epoch]])
        assert sorted(rows.tolist()) == list(range(n)), f"epoch starting at micro-step {start}"
        assert all(len(r["rows"]) == bs for r in records[start : start + per_epoch])
    if epochs > 1 and n > 2:  # each epoch reshuffles (not the same order every epoch)
        first = torch.cat([r["rows"] for r in records[:per_epoch]])
        second = torch.cat([r["rows"] for r in records[per_epoch : 2 * per_epoch]])
        assert not torch.equal(first, second)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_new_rollout_exactly_every_cycle(layout):
    schedule = _schedule(*layout)
    cycle = schedule.cycle_length
    assert cycle == layout[1] * layout[2] * layout[3]  # steps_per_generation x num_ppo_epochs micro-steps
    records = _drive(schedule, 3 * cycle + 1)
    assert [r["step"] for r in records if r["rollout"]] == [0, cycle, 2 * cycle, 3 * cycle]
    assert not any(r["skipped"] for r in records)


def test_token_counts_are_each_optimizer_steps_whole_minibatch():
    bs, ga, nmb, epochs = 2, 2, 3, 2
    schedule = _schedule(bs, ga, nmb, epochs)
    mask = _mask(schedule.rows_per_batch, T=9)
    records = _drive(schedule, schedule.cycle_length, masks=lambda step: mask)
    valid = mask.sum(1)
    for k in range(0, len(records), ga):  # one optimizer step = ga consecutive micro-steps
        group = records[k : k + ga]
        expected = float(sum(valid[r["rows"]].sum() for r in group))
        assert all(r["tokens"] == expected for r in group), k
    counts = schedule.minibatch_token_counts(mask)
    assert counts.shape == (epochs, nmb)
    assert counts.sum(1).tolist() == [float(valid.sum())] * epochs  # each epoch covers every token once
    assert len(set(counts.flatten().tolist())) > 1  # the minibatches differ: a wrong index would be seen


def test_token_counts_are_reduced_over_processes_by_the_function_given():
    schedule = _schedule(2, 1, 2, 1)
    mask = _mask(schedule.rows_per_batch)
    schedule.start_batch(mask, reduce_sum=lambda t: 2 * t)  # two processes with the same counts
    assert torch.equal(schedule.minibatch_tokens, 2 * schedule.minibatch_token_counts(mask))


def test_early_stop_skips_the_rest_of_the_batch_and_the_next_batch_runs_normally():
    bs, ga, nmb, epochs = 1, 2, 2, 2  # 4 optimizer steps per rollout batch, 8 micro-steps
    schedule = _schedule(bs, ga, nmb, epochs, target=0.5)
    cycle = schedule.cycle_length
    # batch 1: the first optimizer step's mean KL (0.2 + 1.0) / 2 = 0.6 passes the target; batch 2: always 0.3
    kls = {0: 0.2, 1: 1.0}
    records = _drive(schedule, 2 * cycle, kl=lambda step: kls.get(step, 0.3))
    first, second = records[:cycle], records[cycle:]
    assert first[1]["approx_kl"] == pytest.approx(0.6) and first[1]["early_stop"]
    assert [r["skipped"] for r in first] == [False, False] + [True] * (cycle - 2)
    assert second[0]["rollout"] and not any(r["skipped"] for r in second)
    assert [r["approx_kl"] for r in second[1::2]] == pytest.approx([0.3] * (cycle // ga))
    assert not any(r["early_stop"] for r in second)


def test_the_kl_is_decided_per_optimizer_step_not_per_micro_batch():
    schedule = _schedule(1, 2, 1, 2, target=0.5)
    schedule.start_batch(_mask(schedule.rows_per_batch))
    schedule.record_approx_kl(torch.tensor(0.9))  # one micro-batch past the target ...
    assert schedule.end_step() == (None, False)  # ... but the optimizer step is not over
    schedule.record_approx_kl(torch.tensor(0.0))
    seen = []
    approx, stop = schedule.end_step(reduce_mean=lambda v: (seen.append(v.clone()), float(v.mean()))[1])
    assert (approx, stop) == (pytest.approx(0.45), False)  # the mean of the step, over all processes
    assert seen and seen[0].tolist() == pytest.approx([0.9, 0.0])
    assert not schedule.skip_step()


def test_no_target_never_stops():
    schedule = _schedule(2, 1, 2, 2)
    records = _drive(schedule, 2 * schedule.cycle_length, kl=lambda step: 1e9)
    assert not any(r["skipped"] or r["early_stop"] for r in records)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what the trainer's checkpoint loading allows


@pytest.mark.parametrize("stop_at", [2, 4, 6, 8, 10])  # checkpoints fall between optimizer steps (ga = 2)
@pytest.mark.parametrize("early_stop", [False, True])
def test_resume_mid_batch_reproduces_the_uninterrupted_run(stop_at, early_stop):
    layout = (2, 2, 2, 2)  # 8 micro-steps per rollout batch
    target = 0.5 if early_stop else None
    kl = lambda step: 1.0 if step < 2 else 0.0  # noqa: E731  (batch 1 stops after its first optimizer step)
    masks = lambda step: _mask(8, seed=step)  # noqa: E731  (each batch its own rows)
    full = _drive(_schedule(*layout, seed=3, target=target), 12, kl=kl, masks=masks)

    before = _schedule(*layout, seed=3, target=target)
    head = _drive(before, stop_at, kl=kl, masks=masks)
    resumed = _schedule(*layout, seed=3, target=target)
    resumed.resume_at(stop_at // 2)  # the checkpoint's global step
    assert resumed.step == before.step
    if before.in_batch():  # the trainer saves the schedule with the batch inside a rollout batch's epochs
        resumed.load_state_dict(_roundtrip(before.state_dict()))
    else:
        assert resumed.rollout_due()
    tail = _drive(resumed, 12 - stop_at, kl=kl, masks=masks)

    def key(r):
        return (r["step"], r["skipped"], r["rollout"], r.get("rows", torch.empty(0)).tolist(), r.get("tokens"))

    assert [key(r) for r in head + tail] == [key(r) for r in full]
    assert any(r["skipped"] for r in full) == early_stop


def test_resume_at_a_boundary_samples_a_new_batch():
    schedule = _schedule(2, 1, 2, 2)
    _drive(schedule, schedule.cycle_length)
    resumed = _schedule(2, 1, 2, 2)
    resumed.resume_at(schedule.step)  # ga = 1: optimizer steps = micro-steps
    assert resumed.rollout_due() and not resumed.in_batch()
    resumed.resume_at(1)  # inside a batch without its saved state: still due (the trainer refuses this case)
    assert resumed.rollout_due() and resumed.position == 1


def test_loading_another_num_ppo_epochs_is_refused():
    schedule = _schedule(2, 1, 2, 2)
    _drive(schedule, 1)
    other = _schedule(2, 1, 2, 3)
    with pytest.raises(ValueError, match="num_ppo_epochs=3"):
        other.load_state_dict(schedule.state_dict())


def test_inconsistent_layout_and_wrong_batch_size_are_refused():
    with pytest.raises(ValueError, match="steps_per_generation"):
        PPOSchedule(steps_per_generation=3, num_ppo_epochs=1, gradient_accumulation_steps=2,
                    per_device_batch_size=2, num_mini_batches=1, seed=0)  # fmt: skip
    schedule = _schedule(2, 1, 2, 1)
    with pytest.raises(ValueError, match="expected steps_per_generation x per_device_batch_size"):
        schedule.start_batch(_mask(5))


def test_on_policy_single_update():
    assert _schedule(4, 2, 1, 1).on_policy_single_update
    assert not _schedule(4, 1, 2, 1).on_policy_single_update
    assert not _schedule(4, 1, 1, 2).on_policy_single_update


def test_the_rollout_buffer_file_of_the_previous_version_loads():
    """``rollout_buffer_<process>.pt`` as PPOTrainer wrote it before PPOSchedule existed (its keys, its values)."""
    schedule = _schedule(2, 1, 2, 2, target=0.1)
    perms = [torch.tensor([3, 1, 0, 2]), torch.tensor([0, 2, 3, 1])]
    old = {"step": 5, "buffer": {}, "epoch_perms": perms, "minibatch_tokens": torch.tensor([[3.0, 4.0], [5.0, 2.0]]),
           "stop_batch_updates": False, "minibatch_approx_kl": []}  # fmt: skip
    schedule.load_state_dict(_roundtrip(old))
    assert (schedule.step, schedule.position, schedule.epoch_and_micro()) == (5, 1, (0, 1))
    assert schedule.in_batch() and not schedule.rollout_due() and not schedule.skip_step()
    assert schedule.micro_batch_rows().tolist() == [0, 2] and float(schedule.num_items_in_batch()) == 4.0
