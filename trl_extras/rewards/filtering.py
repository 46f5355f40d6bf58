"""Easy-pair filtering: score every pair with a reward model trained on all pairs, drop the easiest (and optionally
the most suspect) pairs, retrain a fresh reward model on the rest.

Why: pairs the model already separates by a wide margin carry almost no gradient (−log σ(m) → 0) but still cost
compute and pull the reward scale apart; pairs with strongly negative margins are likely label noise ("Secrets of
RLHF II", Wang et al. 2024: the lowest-strength 20% of HH pairs train worse than random; the easiest 10% alone is
not the best slice either).

- :func:`select_pairs` — pure: which indices to drop given margins ``(N,)``.
- :func:`filter_easy_pairs` — scores with :func:`~trl_extras.rewards.pairs.pair_margins` (no grad, batched,
  tokenized like RewardTrainer, works with LoRA) and returns the filtered dataset and a :class:`FilterReport`.
- :func:`train_with_easy_pair_filtering` — train on all, filter, train a *fresh* model on the rest.

Pairs are identified by a stable ``id`` column (created as ``"pair-<row>"`` when absent): RewardTrainer silently
drops over-length pairs, so positions are not identities.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field

import torch

from .pairs import pair_margins

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def select_pairs(margins: torch.Tensor, drop_easiest: float, drop_suspect: float = 0.0) -> dict[str, torch.Tensor]:
    """Indices to keep and to drop, from margins ``(N,)``.

    ``floor(drop_easiest · N)`` pairs with the largest margins are "easy", ``floor(drop_suspect · N)`` with the
    most negative margins are "suspect" (ties broken by position, stably). Returns ``keep``, ``easy``,
    ``suspect`` as sorted index tensors ``(k,)``.
    """
    if margins.dim() != 1:
        raise ValueError(f"margins must be 1-D (N,), got shape {tuple(margins.shape)}")
    for name, frac in (("drop_easiest", drop_easiest), ("drop_suspect", drop_suspect)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if drop_easiest + drop_suspect >= 1.0:
        raise ValueError(f"drop_easiest + drop_suspect must be < 1, got {drop_easiest + drop_suspect}")
    n = margins.numel()
    n_easy, n_suspect = math.floor(drop_easiest * n + 1e-9), math.floor(drop_suspect * n + 1e-9)
    order = torch.sort(margins, stable=True).indices  # ascending
    suspect = order[:n_suspect]
    easy = order[n - n_easy :] if n_easy else order[:0]
    dropped = torch.zeros(n, dtype=torch.bool)
    dropped[suspect] = True
    dropped[easy] = True
    return {
        "keep": (~dropped).nonzero().flatten(),
        "easy": torch.sort(easy).values,
        "suspect": torch.sort(suspect).values,
    }


def margin_quantiles(margins: torch.Tensor) -> dict[str, float]:
    if margins.numel() == 0:
        return {}
    q = torch.quantile(margins.double(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {f"q{int(round(p * 100)):02d}": float(v) for p, v in zip(QUANTILES, q)}


@dataclass
class FilterReport:
    """What :func:`filter_easy_pairs` did. ``to_dict()`` is JSON-ready."""

    num_total: int = field(metadata={"help": "Pairs scored."})
    num_kept: int = field(metadata={"help": "Pairs in the filtered dataset."})
    num_dropped_easy: int = field(metadata={"help": "Pairs dropped for the largest margins."})
    num_dropped_suspect: int = field(metadata={"help": "Pairs dropped for the most negative margins."})
    easy_threshold: float | None = field(metadata={"help": "Smallest margin among dropped easy pairs."})
    suspect_threshold: float | None = field(metadata={"help": "Largest margin among dropped suspect pairs."})
    margin_quantiles_before: dict = field(metadata={"help": "Margin quantiles (q00..q100) of all pairs."})
    margin_quantiles_after: dict = field(metadata={"help": "Margin quantiles of the kept pairs."})
    dropped_easy_ids: list = field(metadata={"help": "Stable ids of the easy pairs dropped."})
    dropped_suspect_ids: list = field(metadata={"help": "Stable ids of the suspect pairs dropped."})
    id_column: str = field(default="id", metadata={"help": "Column holding the ids."})

    def to_dict(self) -> dict:
        return asdict(self)


def ensure_id_column(dataset, id_column: str = "id", prefix: str = "pair-"):
    """The dataset with a unique ``id_column`` (added as ``"<prefix><row>"`` when missing; duplicates raise)."""
    if id_column in dataset.column_names:
        ids = dataset[id_column]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Column {id_column!r} has duplicate ids; ids must identify pairs.")
        return dataset
    return dataset.add_column(id_column, [f"{prefix}{i}" for i in range(len(dataset))])


def filter_easy_pairs(
    model,
    dataset,
    processing_class,
    drop_easiest: float = 0.2,
    drop_suspect: float = 0.0,
    min_keep: int = 1,
    batch_size: int = 64,
    id_column: str = "id",
    margins: torch.Tensor | None = None,
    progress: bool = False,
):
    """Drop the easiest (largest-margin) and optionally the most suspect (most negative-margin) pairs.

    Args:
        model: reward model trained on ``dataset`` (plain or PEFT), scored without gradients.
        dataset: preference pairs (any RewardTrainer format except pre-tokenized).
        processing_class: the model's tokenizer.
        drop_easiest: fraction of pairs with the largest margins to drop.
        drop_suspect: fraction of pairs with the most negative margins to drop (likely label noise).
        min_keep: refuse (``ValueError``) when fewer pairs would remain.
        batch_size: sequences per scoring forward pass.
        id_column: stable id column; created when absent.
        margins: precomputed margins ``(N,)`` (skips scoring).
        progress: show a progress bar while scoring.

    Returns:
        ``(filtered_dataset, report)``: the kept rows in their original order (with ``id_column`` and a
        ``margin_before_filtering`` column), and a :class:`FilterReport`.
    """
    if min_keep < 1:
        raise ValueError(f"min_keep must be >= 1, got {min_keep}")
    dataset = ensure_id_column(dataset, id_column)
    if margins is None:
        margins = pair_margins(
            model, processing_class, dataset, batch_size=batch_size, id_column=id_column, progress=progress
        )
    elif margins.shape != (len(dataset),):
        raise ValueError(f"margins has shape {tuple(margins.shape)}, expected ({len(dataset)},)")
    margins = margins.float().cpu()
    sel = select_pairs(margins, drop_easiest, drop_suspect)
    if sel["keep"].numel() < min_keep:
        raise ValueError(
            f"Filtering would keep {sel['keep'].numel()} of {len(dataset)} pairs, fewer than min_keep={min_keep}: "
            "lower drop_easiest/drop_suspect or min_keep."
        )
    ids = dataset[id_column]
    report = FilterReport(
        num_total=len(dataset),
        num_kept=int(sel["keep"].numel()),
        num_dropped_easy=int(sel["easy"].numel()),
        num_dropped_suspect=int(sel["suspect"].numel()),
        easy_threshold=float(margins[sel["easy"]].min()) if sel["easy"].numel() else None,
        suspect_threshold=float(margins[sel["suspect"]].max()) if sel["suspect"].numel() else None,
        margin_quantiles_before=margin_quantiles(margins),
        margin_quantiles_after=margin_quantiles(margins[sel["keep"]]),
        dropped_easy_ids=[ids[i] for i in sel["easy"].tolist()],
        dropped_suspect_ids=[ids[i] for i in sel["suspect"].tolist()],
        id_column=id_column,
    )
    column = "margin_before_filtering"
    scored = dataset.remove_columns(column) if column in dataset.column_names else dataset
    scored = scored.add_column(column, margins.tolist())
    return scored.select(sel["keep"].tolist()), report


@dataclass
class FilteringResult:
    """Output of :func:`train_with_easy_pair_filtering`."""

    scoring_trainer: object  # the RewardTrainer trained on all pairs (its model scored the margins)
    trainer: object  # the RewardTrainer of the fresh model trained on the kept pairs
    filtered_dataset: object
    report: FilterReport

    @property
    def model(self):
        return self.trainer.model


def train_with_easy_pair_filtering(
    model,
    train_dataset,
    args=None,
    eval_dataset=None,
    processing_class=None,
    drop_easiest: float = 0.2,
    drop_suspect: float = 0.0,
    min_keep: int = 1,
    scoring_batch_size: int = 64,
    id_column: str = "id",
    scoring_args=None,
    trainer_cls=None,
    **trainer_kwargs,
) -> FilteringResult:
    """Train a reward model on all pairs, drop easy/suspect pairs, train a *fresh* reward model on the rest.

    Args:
        model: a path (loaded afresh for each run; RewardTrainer seeds the head init with ``args.seed``) or a model
            instance (deep-copied before the first run, so the second run starts from the same untrained weights).
        train_dataset: all pairs; ``eval_dataset``: evaluated by both trainers as usual.
        args: ``RewardConfig`` of the final run (``output_dir``); the scoring run uses ``scoring_args`` or a copy of
            ``args`` writing to ``<output_dir>/scoring``.
        drop_easiest, drop_suspect, min_keep, scoring_batch_size, id_column: see :func:`filter_easy_pairs`.
        trainer_cls: ``trl.RewardTrainer`` by default.
        **trainer_kwargs: passed to both trainers (``peft_config``, ``quantization_config``, ``callbacks``, ...).
    """
    from trl import RewardConfig, RewardTrainer

    from .pairs import validate_preference_dataset

    # before the first reward model trains: a bad row would otherwise surface only when its pairs are scored
    validate_preference_dataset(train_dataset, "train_dataset")
    validate_preference_dataset(eval_dataset, "eval_dataset")
    trainer_cls = trainer_cls or RewardTrainer
    if args is None:
        args = RewardConfig(output_dir="reward-filtered")
    if scoring_args is None:
        scoring_args = copy.copy(args)
        scoring_args.output_dir = os.path.join(args.output_dir, "scoring")
    train_dataset = ensure_id_column(train_dataset, id_column)
    fresh = model if isinstance(model, str) else copy.deepcopy(model)

    # Each run gets its own copy of the PEFT config (get_peft_model may fill fields in).
    scoring_kwargs = {k: copy.deepcopy(v) if k == "peft_config" else v for k, v in trainer_kwargs.items()}
    scoring_trainer = trainer_cls(
        model=model,
        args=scoring_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        **scoring_kwargs,
    )
    scoring_trainer.train()
    filtered, report = filter_easy_pairs(
        scoring_trainer.model,
        train_dataset,
        scoring_trainer.processing_class,
        drop_easiest=drop_easiest,
        drop_suspect=drop_suspect,
        min_keep=min_keep,
        batch_size=scoring_batch_size,
        id_column=id_column,
        progress=not scoring_trainer.args.disable_tqdm,
    )
    trainer = trainer_cls(
        model=fresh,
        args=args,
        train_dataset=filtered,
        eval_dataset=eval_dataset,
        processing_class=scoring_trainer.processing_class,
        **trainer_kwargs,
    )
    trainer.train()
    return FilteringResult(scoring_trainer=scoring_trainer, trainer=trainer, filtered_dataset=filtered, report=report)
