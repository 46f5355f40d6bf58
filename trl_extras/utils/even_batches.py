"""Fine-tuning on N processes that trains exactly the rows one process trains, whatever the dataset's length.

Under ``accelerate launch`` the train dataloader is sharded by ``BatchSamplerShard``. When the rows do not fill
the last global batch (``per_device_train_batch_size × num_processes``), accelerate's ``even_batches`` (on by
default, and needed: a process with one batch fewer would wait forever in DDP's all-reduce) fills it with rows
from the start of the epoch, so those rows are trained twice and the model differs from a one-process run. One
process never repeats a row: its last micro-batch is just smaller.

The fix here: append *masked* rows (every label ``-100``) so the dataset fills whole global batches, and yield them
after the epoch's shuffled real rows, so the real rows keep the order (and the grouping into optimizer steps) of
one process. A masked row has no trained token: it adds zero to the loss and zero to ``num_items_in_batch``, which
transformers' ``Trainer`` sums over the accumulated micro-batches and, with ``average_tokens_across_devices`` (its
default), over the processes — so each optimizer step's loss is still the sum over its real tokens divided by their
global count, exactly one process's loss for the same micro-batches. A process whose micro-batch is all padding
still runs its forward and backward (zero gradients), so DDP and DeepSpeed's collectives stay in step.

:func:`even_batch_padding` is the arithmetic, :func:`pad_with_masked_rows` the rows, :class:`TailPaddedSampler`
the order, and :class:`EvenBatchPaddingMixin` puts them into a ``Trainer`` whose train dataset has a ``labels``
column (TRL's ``SFTTrainer`` builds one).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def even_batch_padding(num_rows: int, batch_size: int, num_processes: int, split_batches: bool = False) -> int:
    """How many masked rows to append so that ``num_rows`` fill whole global batches (0 on one process).

    Args:
        num_rows: the real rows of the train dataset (one epoch).
        batch_size: the batch size of each process's dataloader (``Trainer._train_batch_size``, i.e.
            ``per_device_train_batch_size``); with ``split_batches`` the dataloader's batch, split over processes.
        num_processes: the data-parallel processes (``accelerator.num_processes``).
        split_batches: accelerate's ``split_batches`` (then one dataloader batch is the global batch).

    Returns:
        ``p >= 0``, the least such that ``num_rows + p`` is a multiple of the global batch
        (``batch_size × num_processes``, or ``batch_size`` with ``split_batches``), so that accelerate's
        ``even_batches`` has nothing to fill; 0 with one process (it never repeats a row) or no rows.
    """
    if batch_size < 1 or num_processes < 1 or num_rows < 0:
        raise ValueError(f"even_batch_padding: need num_rows >= 0, batch_size >= 1, num_processes >= 1; got "
                         f"num_rows={num_rows}, batch_size={batch_size}, num_processes={num_processes}.")
    if num_processes == 1 or num_rows == 0:
        return 0
    global_batch = batch_size if split_batches else batch_size * num_processes
    return -num_rows % global_batch


def pad_with_masked_rows(dataset, num_rows: int):
    """``dataset`` (a tokenized ``datasets.Dataset`` with ``input_ids`` and ``labels``) plus ``num_rows`` masked rows.

    Each added row is a copy of the shortest row with every label set to ``-100``: it trains no token, and being
    the shortest it never makes a padded micro-batch longer than its real rows need. The real rows keep their
    indices ``0 .. len(dataset) - 1``; the masked ones follow."""
    if num_rows == 0:
        return dataset
    from datasets import Dataset, concatenate_datasets

    missing = {"input_ids", "labels"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"pad_with_masked_rows needs a tokenized dataset with 'input_ids' and 'labels'; it lacks "
                         f"{sorted(missing)}.")
    lengths = [len(ids) for ids in dataset["input_ids"]]
    shortest = min(range(len(lengths)), key=lengths.__getitem__)
    rows = dataset.select([shortest] * num_rows).to_dict()
    rows["labels"] = [[-100] * len(labels) for labels in rows["labels"]]
    return concatenate_datasets([dataset, Dataset.from_dict(rows, features=dataset.features)])


class TailPaddedSampler:
    """Yields ``inner``'s indices (the real rows, in its order), then ``num_real .. num_real + num_padding - 1``.

    ``inner`` is built exactly as accelerate would build the sampler of the unpadded dataset (a
    ``SeedableRandomSampler`` over the real rows), so the real rows come in one process's order, every epoch
    (``set_epoch`` is passed on)."""

    def __init__(self, inner, num_real: int, num_padding: int):
        self.inner = inner
        self.num_real = num_real
        self.num_padding = num_padding

    def __len__(self) -> int:
        return self.num_real + self.num_padding

    def __iter__(self):
        yield from self.inner
        yield from range(self.num_real, self.num_real + self.num_padding)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)


class EvenBatchPaddingMixin:
    """``Trainer`` mixin: on N processes, pad the train dataset with masked rows to whole global batches.

    Put it before the trainer class (``class T(EvenBatchPaddingMixin, SFTTrainer)``) and call
    :meth:`_pad_train_dataset_for_even_batches` at the end of ``__init__`` (after the dataset is tokenized and has
    its ``labels``). One process: nothing changes. See the module docstring for why this equals one process."""

    _num_padding_rows: int = 0

    def _pad_train_dataset_for_even_batches(self) -> None:
        from datasets import Dataset

        dataset = self.train_dataset
        num_processes = self.accelerator.num_processes
        if num_processes == 1 or not isinstance(dataset, Dataset):
            return
        if self.args.dataloader_drop_last:
            return  # the incomplete last global batch is dropped: nothing is repeated
        if "labels" not in dataset.column_names:
            logger.warning("The train dataset has no 'labels' column to mask, so it is not padded to whole global "
                           "batches: accelerate's even_batches may train up to %d rows twice per epoch.",
                           self._train_batch_size * num_processes - 1)
            return
        if not self.args.average_tokens_across_devices:
            logger.warning("average_tokens_across_devices=False: each process normalises its loss by its own tokens, "
                           "so N processes do not compute one process's loss (and a process whose micro-batch is all "
                           "padding rows contributes a zero loss to the average).")
        self._num_padding_rows = even_batch_padding(len(dataset), self._train_batch_size, num_processes,
                                                    split_batches=self.accelerator.split_batches)
        self.train_dataset = pad_with_masked_rows(dataset, self._num_padding_rows)

    def _get_train_sampler(self, train_dataset=None):
        import torch
        from accelerate.data_loader import SeedableRandomSampler

        sampler = super()._get_train_sampler(train_dataset)
        if not self._num_padding_rows:
            return sampler
        num_real = len(train_dataset if train_dataset is not None else self.train_dataset) - self._num_padding_rows
        config = self.accelerator.dataloader_config
        if type(sampler) is torch.utils.data.RandomSampler and config.use_seedable_sampler:
            # What accelerate's prepare_data_loader makes of RandomSampler(real rows): the same seed, so the same
            # permutation of the real rows as one process; the masked rows go last.
            inner = SeedableRandomSampler(data_source=range(num_real), replacement=False, num_samples=None,
                                          generator=None, data_seed=config.data_seed)
            return TailPaddedSampler(inner, num_real, self._num_padding_rows)
        if type(sampler) is not torch.utils.data.SequentialSampler:  # sequential: the masked rows are last already
            logger.warning("train sampler %s: the masked padding rows are shuffled in with the real rows (no row is "
                           "trained twice, but the optimizer steps group the rows unlike one process).",
                           type(sampler).__name__)
        return sampler
