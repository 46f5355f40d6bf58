"""RolloutBatch (trl_extras.trainers.ppo.rollout): the typed rollout batch PPO's update reads, its micro-batches,
its checkpoint format (and the dict format of checkpoints written before it existed)."""

from __future__ import annotations

import io

import pytest
import torch

from trl_extras.trainers.ppo.rollout import RolloutBatch

B, P, T = 6, 3, 5


def _full(seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    return RolloutBatch(
        prompt_ids=torch.randint(0, 50, (B, P), generator=g), prompt_mask=torch.ones(B, P, dtype=torch.long),
        completion_ids=torch.randint(0, 50, (B, T), generator=g),
        completion_mask=(torch.arange(T)[None] < torch.arange(1, B + 1)[:, None].clamp(max=T)).long(),
        scores=torch.randn(B, generator=g), train_scores=torch.randn(B, generator=g), old_logprobs=-torch.rand(B, T, generator=g),
        old_values=torch.randn(B, T, generator=g), advantages=torch.randn(B, T, generator=g),
        returns=torch.randn(B, T, generator=g), group_index=torch.arange(B) // 2,
        ref_logprobs=-torch.rand(B, T, generator=g), kl_coef=torch.full((B,), 0.05),
    )


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_select_takes_the_same_rows_of_every_field():
    batch = _full()
    idx = torch.tensor([4, 0, 2])
    micro = batch.select(idx)
    assert len(micro) == 3 and micro.is_complete
    for name, tensor in batch.rows().items():
        assert torch.equal(getattr(micro, name), tensor[idx]), name
    assert micro.num_items_in_batch is None
    assert torch.equal(micro.input_ids, torch.cat([batch.prompt_ids[idx], batch.completion_ids[idx]], 1))
    assert torch.equal(micro.attention_mask, torch.cat([batch.prompt_mask[idx], batch.completion_mask[idx]], 1))


def test_an_eval_batch_has_the_sampled_fields_only():
    full = _full()
    batch = RolloutBatch(full.prompt_ids, full.prompt_mask, full.completion_ids, full.completion_mask, full.scores)
    assert not batch.is_complete and batch.advantages is None
    assert set(batch.rows()) == {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "scores"}
    assert len(batch.select(torch.tensor([1, 2]))) == 2
    again = RolloutBatch.from_state_dict(_roundtrip(batch.state_dict()))
    assert again.advantages is None and torch.equal(again.scores, batch.scores)


def test_state_dict_roundtrips_through_a_weights_only_load():
    batch = _full()
    again = RolloutBatch.from_state_dict(_roundtrip(batch.state_dict()))
    assert again.is_complete
    for name, tensor in batch.rows().items():
        assert torch.equal(getattr(again, name), tensor), name


def test_the_dict_written_before_the_dataclass_still_loads():
    batch = _full()
    # what PPOTrainer._rollout returned and _save_rollout_buffer stored as "buffer" (string keys, CPU tensors)
    old = {
        "prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask, "completion_ids": batch.completion_ids,
        "completion_mask": batch.completion_mask, "scores": batch.scores, "old_logprobs": batch.old_logprobs,
        "old_values": batch.old_values, "advantages": batch.advantages, "returns": batch.returns,
        "group_index": batch.group_index, "ref_logprobs": batch.ref_logprobs, "kl_coef": batch.kl_coef,
    }
    again = RolloutBatch.from_state_dict(_roundtrip(old))
    assert again.train_scores is None  # added since: a resumed old batch trains from its advantages, as before
    for name, tensor in old.items():
        assert torch.equal(getattr(again, name), tensor), name


def test_a_buffer_of_another_format_is_refused_by_name():
    state = _full().state_dict()
    with pytest.raises(ValueError, match=r"unknown fields \['values_v2'\]"):
        RolloutBatch.from_state_dict({**state, "values_v2": state["old_values"]}, where="rollout_buffer_0.pt")
    del state["scores"]
    with pytest.raises(ValueError, match=r"missing \['scores'\]"):
        RolloutBatch.from_state_dict(state)
    state = _full().state_dict()
    state["returns"] = state["returns"][:2]
    with pytest.raises(ValueError, match="different numbers of rows"):
        RolloutBatch.from_state_dict(state)


def test_to_moves_every_tensor_and_keeps_num_items():
    import dataclasses

    batch = dataclasses.replace(_full(), num_items_in_batch=torch.tensor(7.0))
    moved = batch.to("cpu")
    assert moved is not batch and moved.num_items_in_batch == 7.0
    assert "num_items_in_batch" not in moved.state_dict()  # a micro-batch's normaliser is never saved
