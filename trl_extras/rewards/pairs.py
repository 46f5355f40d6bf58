"""Preference-pair utilities shared by filtering, evaluation and the experiments: validation and margins.

A pair's *margin* is ``r(prompt + chosen) − r(prompt + rejected)`` under a Bradley–Terry reward model, scored
through :func:`trl_extras.rewards.scoring.score_with_reward_model`, i.e. tokenized exactly as TRL's
``RewardTrainer`` tokenizes training pairs:

- explicit prompt (a ``prompt`` column): ``prompt + chosen`` / ``prompt + rejected``;
- implicit prompt (no ``prompt`` column, chosen/rejected hold the whole text or conversation): the prompt is the
  empty string (standard) or the empty message list (conversational), which is what RewardTrainer's
  concatenation amounts to;
- standard text gets the EOS string appended; conversational data goes through the chat template.

Bad input raises ``ValueError`` naming the row: a missing ``chosen``/``rejected`` column, ``None`` or empty
chosen/rejected, identical chosen and rejected (no preference to learn; pass ``allow_identical=True`` to score
them anyway: their margin is 0 up to float noise), a pad token the model does not pool with, NaN/inf margins.
``chosen_ids``/``rejected_ids`` (pre-tokenized) datasets are not accepted: the text is what gets scored.
"""

from __future__ import annotations

import math

import torch

from .scoring import score_with_reward_model

REQUIRED_COLUMNS = ("chosen", "rejected")


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, list):  # conversational: no messages, or only empty contents
        return len(value) == 0 or all(not (m.get("content") or "").strip() for m in value if isinstance(m, dict))
    return False


def _row_name(ids, i: int) -> str:
    return f"row {i} (id {ids[i]!r})" if ids is not None else f"row {i}"


def pair_columns(dataset, id_column: str = "id", allow_identical: bool = False) -> tuple[list, list, list]:
    """Validated ``(prompts, chosen, rejected)`` lists of a preference dataset (``datasets.Dataset`` or dict).

    Implicit-prompt datasets get ``""`` (standard) or ``[]`` (conversational) prompts, matching RewardTrainer.
    """
    columns = list(dataset.column_names) if hasattr(dataset, "column_names") else list(dataset)
    if "chosen_ids" in columns and "chosen" not in columns:
        raise ValueError("Pre-tokenized pairs (`chosen_ids`/`rejected_ids`) are not supported here: pass the text.")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"The preference dataset lacks column(s) {missing}; it has {columns}.")
    chosen, rejected = list(dataset["chosen"]), list(dataset["rejected"])
    if len(chosen) == 0:
        raise ValueError("The preference dataset is empty.")
    ids = list(dataset[id_column]) if id_column in columns else None
    if "prompt" in columns:
        prompts = list(dataset["prompt"])
    else:
        conversational = isinstance(chosen[0], list)
        prompts = [[] if conversational else ""] * len(chosen)
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        if "prompt" in columns and p is None:
            raise ValueError(f"{_row_name(ids, i)} has a None prompt.")
        if _is_empty(c) or _is_empty(r):
            which = "chosen" if _is_empty(c) else "rejected"
            raise ValueError(f"{_row_name(ids, i)} has an empty {which!r} response.")
        if type(c) is not type(r):
            raise ValueError(f"{_row_name(ids, i)} mixes a conversational and a plain-text response.")
        if not allow_identical and c == r:
            raise ValueError(
                f"{_row_name(ids, i)} has identical chosen and rejected responses, which carry no preference. "
                "Remove such rows, or pass allow_identical=True to score them (margin ~0)."
            )
    return prompts, chosen, rejected


def validate_preference_dataset(dataset, name: str = "dataset", allow_identical: bool = False,
                                processing_class=None) -> None:  # fmt: skip
    """The one check every preference-data entry point runs before any training: :func:`pair_columns`' rules
    (``chosen``/``rejected`` columns, no empty or identical responses) with the dataset's ``name`` in the message.
    With ``processing_class`` (the reward model's tokenizer) responses are also compared as the model sees them
    (:func:`identical_after_tokenization`): two different texts can tokenize alike (characters the vocabulary
    lacks all become the unknown token).

    ``None`` passes (optional datasets); pre-tokenized (``chosen_input_ids``...) and streamed (no ``len``)
    datasets are left to the trainer.
    """
    if dataset is None:
        return
    columns = list(dataset.column_names) if hasattr(dataset, "column_names") else list(dataset)
    if "chosen" not in columns and any(c.startswith(("chosen_input_ids", "chosen_ids")) for c in columns):
        return
    if not hasattr(dataset, "__len__"):
        return
    try:
        prompts, chosen, rejected = pair_columns(dataset, allow_identical=allow_identical)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if processing_class is not None and not allow_identical:
        row = identical_after_tokenization(processing_class, prompts, chosen, rejected)
        if row is not None:
            raise ValueError(
                f"{name}: row {row} has chosen {chosen[row]!r:.60} and rejected {rejected[row]!r:.60}, which differ as "
                "text but tokenize identically (e.g. characters the tokenizer maps to its unknown token): the pair "
                "carries no preference the model can see. Remove such rows."
            )


def identical_after_tokenization(processing_class, prompts, chosen, rejected) -> int | None:
    """Index of the first pair whose chosen and rejected token ids are equal as the reward model reads them
    (:func:`~trl_extras.rewards.scoring.reward_model_input_ids`, RewardTrainer's tokenization); None if none."""
    from .scoring import reward_model_input_ids

    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        if c != r and reward_model_input_ids(tokenizer, p, c) == reward_model_input_ids(tokenizer, p, r):
            return i
    return None


def check_pad_pooling(model, processing_class) -> None:
    """Raise unless the model pools at the token the scorer pads with (else rewards are read at a wrong position)."""
    pad_id = (
        processing_class.pad_token_id if processing_class.pad_token_id is not None else processing_class.eos_token_id
    )
    if pad_id is None:
        raise ValueError("The tokenizer has neither a pad nor an EOS token; set `processing_class.pad_token`.")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    model_pad = getattr(config, "pad_token_id", None)
    if model_pad is None:
        raise ValueError(
            "The reward model's config has no pad_token_id, so it cannot find the last token of padded sequences. "
            f"Set `model.config.pad_token_id = {pad_id}` (RewardTrainer does this when it trains)."
        )
    if model_pad != pad_id:
        raise ValueError(
            f"The reward model pools at pad_token_id={model_pad} but the tokenizer pads with id {pad_id}: scores would "
            "be read at the wrong position. Use the tokenizer the model was trained with."
        )


@torch.no_grad()
def pair_margins(
    model,
    processing_class,
    dataset,
    batch_size: int = 64,
    max_length: int | None = None,
    allow_identical: bool = False,
    id_column: str = "id",
    progress: bool = False,
) -> torch.Tensor:
    """Margins ``(N,)`` float32 on CPU: ``r(prompt + chosen) − r(prompt + rejected)`` for every row of ``dataset``.

    Args:
        model: sequence-classification reward model (``num_labels=1``), plain or PEFT (LoRA ``SEQ_CLS``).
        processing_class: the tokenizer the model was trained with.
        dataset: preference pairs, standard or conversational, explicit (``prompt`` column) or implicit prompt.
        batch_size: sequences per forward pass (chosen and rejected are scored in separate batches).
        max_length: keep only the last ``max_length`` tokens of longer inputs. RewardTrainer *drops* over-length
            pairs in training; here every row gets a margin so positions match the dataset.
        allow_identical: score rows whose chosen equals rejected instead of raising.
        id_column: column used to name rows in error messages.
        progress: show a tqdm bar over batches (on a terminal; see :mod:`trl_extras.utils.progress`).

    No gradients; the model's train/eval mode is restored afterwards.
    """
    prompts, chosen, rejected = pair_columns(dataset, id_column=id_column, allow_identical=allow_identical)
    check_pad_pooling(model, processing_class)
    chunks = []
    from ..utils.progress import progress_bar

    for start in progress_bar(range(0, len(chosen), batch_size), desc="Scoring pairs", unit="batch", enabled=progress):
        rows = slice(start, start + batch_size)
        r_chosen = score_with_reward_model(
            model, processing_class, prompts[rows], chosen[rows], batch_size, max_length
        )
        r_rejected = score_with_reward_model(
            model, processing_class, prompts[rows], rejected[rows], batch_size, max_length
        )
        chunks.append(r_chosen - r_rejected)
    margins = torch.cat(chunks)
    bad = (~torch.isfinite(margins)).nonzero().flatten().tolist()
    if bad:
        ids = list(dataset[id_column]) if id_column in dataset.column_names else None
        names = ", ".join(_row_name(ids, i) for i in bad[:5])
        raise ValueError(f"{len(bad)} non-finite margin(s) (NaN/inf rewards), e.g. {names}: check the model weights.")
    return margins


def gold_margins(dataset, chosen_column: str = "gold_chosen", rejected_column: str = "gold_rejected") -> torch.Tensor:
    """Gold margins ``(N,)`` from two gold-score columns (the testbed's ``gold_chosen``/``gold_rejected``)."""
    for c in (chosen_column, rejected_column):
        if c not in dataset.column_names:
            raise ValueError(f"Gold margins need column {c!r}; the dataset has {dataset.column_names}.")
    g = torch.tensor(dataset[chosen_column], dtype=torch.float64) - torch.tensor(
        dataset[rejected_column], dtype=torch.float64
    )
    if not all(math.isfinite(x) for x in g.tolist()):
        raise ValueError("Gold scores contain NaN/inf.")
    return g.float()
