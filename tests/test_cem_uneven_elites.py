"""A CEM round's fine-tuning on N processes trains the rows one process trains, for any elite count.

accelerate's ``even_batches`` fills an incomplete last global batch with rows from the start of the epoch, which
are then trained twice; ``trl_extras.utils.even_batches`` pads with masked rows instead and keeps the real rows in
one process's order. These tests shard with accelerate's own ``BatchSamplerShard`` / ``prepare_data_loader`` in one
process (fast); tests/test_distributed.py checks the CEM rounds under DDP and DeepSpeed end to end.
"""

import pytest
import torch

from trl_extras.utils.even_batches import (
    EvenBatchPaddingMixin,
    TailPaddedSampler,
    even_batch_padding,
    pad_with_masked_rows,
)

CASES = [(n, bs, p) for n in range(1, 14) for bs in (1, 2, 3) for p in (1, 2, 3)]


def _shards(order: list[int], batch_size: int, num_processes: int) -> list[list[list[int]]]:
    """Each process's batches of ``order`` as accelerate deals them (even_batches on, the default; one process:
    the plain batches, ``prepare_data_loader`` shards nothing)."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    batches = BatchSampler(order, batch_size, drop_last=False)
    if num_processes == 1:
        return [list(batches)]
    return [list(BatchSamplerShard(batches, num_processes, k, even_batches=True)) for k in range(num_processes)]


def _trained_rows(shards: list[list[list[int]]], num_real: int) -> list[int]:
    """The real rows trained, step by step (process 0's micro-batch, process 1's, ...: one process's order)."""
    assert len({len(s) for s in shards}) == 1, "the processes would run different numbers of steps (DDP hangs)"
    return [i for step in zip(*shards, strict=True) for batch in step for i in batch if i < num_real]


def test_even_batch_padding_values():
    assert even_batch_padding(10, 2, 2) == 2  # the CEM test's round 1: 10 elites, 2 processes x batch 2
    assert even_batch_padding(12, 2, 2) == 0
    assert even_batch_padding(9, 2, 3) == 3
    assert even_batch_padding(1, 3, 3) == 8
    assert even_batch_padding(10, 4, 2, split_batches=True) == 2  # the dataloader's batch is the global one
    assert [even_batch_padding(n, 2, 1) for n in range(6)] == [0] * 6  # one process never repeats a row
    assert even_batch_padding(0, 2, 2) == 0
    with pytest.raises(ValueError, match="batch_size"):
        even_batch_padding(3, 0, 2)


@pytest.mark.parametrize(("num_rows", "batch_size", "num_processes"), CASES)
def test_padding_trains_each_row_once_in_one_process_order(num_rows, batch_size, num_processes):
    """Real rows first (any order: here reversed), masked rows last: every process runs the same number of steps,
    each real row is trained exactly once and the steps group the rows as one process with
    ``num_processes`` accumulation steps of ``batch_size`` does."""
    order = list(range(num_rows))[::-1]
    pad = even_batch_padding(num_rows, batch_size, num_processes)
    if num_processes > 1:
        assert 0 <= pad < batch_size * num_processes and (num_rows + pad) % (batch_size * num_processes) == 0
    padded = order + list(range(num_rows, num_rows + pad))
    assert _trained_rows(_shards(padded, batch_size, num_processes), num_rows) == order
    # the old behaviour (no padding) repeats rows exactly when padding is needed: the check above has teeth
    unpadded = _trained_rows(_shards(order, batch_size, num_processes), num_rows)
    assert (unpadded == order) == (pad == 0)


def test_pad_with_masked_rows():
    from datasets import Dataset

    rows = {"input_ids": [[5, 6, 7, 8], [5, 6], [5, 6, 7]], "labels": [[-100, 6, 7, 8], [-100, 6], [-100, -100, 7]]}
    data = Dataset.from_dict(rows)
    padded = pad_with_masked_rows(data, 3)
    assert len(padded) == 6 and padded.features == data.features
    assert padded[:3] == data[:3]  # the real rows keep their indices
    assert padded["input_ids"][3:] == [[5, 6]] * 3  # copies of the shortest row: no batch gets longer
    assert padded["labels"][3:] == [[-100, -100]] * 3  # ... with no trained token
    assert pad_with_masked_rows(data, 0) is data
    with pytest.raises(ValueError, match="labels"):
        pad_with_masked_rows(data.remove_columns("labels"), 1)


class _Base:
    def _get_train_sampler(self, train_dataset=None):  # transformers.Trainer's default sampler
        return torch.utils.data.RandomSampler(train_dataset)


class _Padded(EvenBatchPaddingMixin, _Base):
    """The mixin on a stand-in trainer whose accelerator says ``num_processes`` (Trainer's defaults otherwise)."""

    def __init__(self, dataset, num_processes: int, batch_size: int):
        from types import SimpleNamespace

        from accelerate.utils import DataLoaderConfiguration

        self.args = SimpleNamespace(dataloader_drop_last=False, average_tokens_across_devices=True)
        self.accelerator = SimpleNamespace(num_processes=num_processes, split_batches=False,
                                           dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
        self.train_dataset, self._train_batch_size = dataset, batch_size
        self._pad_train_dataset_for_even_batches()


@pytest.mark.parametrize(("num_rows", "num_processes"), [(10, 2), (7, 3), (5, 2), (8, 2), (4, 1)])
def test_mixin_shards_like_one_process_over_epochs(num_rows, num_processes):
    """The padded dataset and ``TailPaddedSampler``, dealt by accelerate's ``prepare_data_loader`` to
    ``num_processes`` processes, train in each epoch exactly one process's (accelerate-seeded) order of the real
    rows, whose rows are in the dataset unchanged."""
    from accelerate.data_loader import prepare_data_loader
    from datasets import Dataset
    from torch.utils.data import DataLoader

    batch_size, epochs = 2, 3
    data = Dataset.from_dict({"input_ids": [[1, 2 + i] for i in range(num_rows)],
                              "labels": [[-100, 2 + i] for i in range(num_rows)]})

    def loader(dataset, sampler, num_processes, k):
        return prepare_data_loader(DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=list),
                                   num_processes=num_processes, process_index=k, put_on_device=False,
                                   use_seedable_sampler=True)

    def epochs_of(dl):
        out = []
        for epoch in range(epochs):
            dl.set_epoch(epoch)
            out.append([[row["labels"][1] - 2 for row in batch] for batch in dl])  # a masked row gives -102
        return out

    # one process, no padding: transformers' RandomSampler, made seedable by accelerate (seeded from torch's
    # initial seed, which Trainer's set_seed leaves)
    torch.manual_seed(1234)
    one = [[i for b in e for i in b] for e in epochs_of(loader(data, torch.utils.data.RandomSampler(data), 1, 0))]
    assert one[0] != one[1]  # reshuffled each epoch

    trainer = _Padded(data, num_processes, batch_size)
    pad = even_batch_padding(num_rows, batch_size, num_processes)
    assert trainer._num_padding_rows == pad and len(trainer.train_dataset) == num_rows + pad
    assert trainer.train_dataset[:num_rows] == data[:]
    shards = []
    for k in range(num_processes):  # each process builds its own sampler, after the same set_seed
        torch.manual_seed(1234)
        sampler = trainer._get_train_sampler(trainer.train_dataset)
        assert isinstance(sampler, TailPaddedSampler) == (pad > 0)
        shards.append(epochs_of(loader(trainer.train_dataset, sampler, num_processes, k)))
    for epoch in range(epochs):
        per_process = [shard[epoch] for shard in shards]
        masked = [i for s in per_process for b in s for i in b if i < 0]
        assert masked == [-102] * pad  # each masked row once
        real = [[[i for i in b if i >= 0] for b in s] for s in per_process]
        assert _trained_rows(real, num_rows) == one[epoch], epoch


def test_logged_kl_leaves_out_processes_with_only_padding():
    """``kl_to_ref``/``entropy_bonus`` are the mean over processes of their micro-batch means; a process whose
    micro-batch is all masked rows has no such micro-batch in the one-process run, so it must not count as 0."""
    from types import SimpleNamespace

    from trl_extras.trainers.cem.sft import RegularizedSFTTrainer

    def mean(local_sum, local_count, others):
        # process 0's call; the other processes' (mean, has_tokens) rows are what they contributed to the gather
        gather = lambda row: torch.cat([row, torch.tensor(others, dtype=torch.float32)])  # noqa: E731
        stand_in = SimpleNamespace(accelerator=SimpleNamespace(gather=gather))
        return RegularizedSFTTrainer._mean_over_processes(stand_in, torch.tensor(local_sum), torch.tensor(local_count))

    assert mean(3.0, 6, [[0.0, 0.0]]) == pytest.approx(0.5)  # process 1 had only padding rows: one process's 0.5
    assert mean(3.0, 6, [[0.25, 1.0]]) == pytest.approx(0.375)  # both trained: the mean of the two means
    assert mean(0.0, 0, [[0.0, 0.0]]) == 0.0  # nobody trained a token (no elite): 0, not NaN
