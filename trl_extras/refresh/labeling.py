"""Labelling comparisons: judges that answer at once, and files for people who answer days later.

Label values (one per comparison): ``0`` — answer A is better, ``1`` — answer B is better, :data:`TIE` (``-1``) —
neither (a tie, or the judge could not decide). This is TRL's pairwise-judge convention (``judge(prompts,
completions_pairs, shuffle_order=True) -> list[int]``, the index of the better completion, ``-1`` when no preference
came out), so a judge written for TRL < 1.0's ``BasePairwiseJudge`` works here as is. TRL 1.16 no longer ships
judges (``trl.judges`` was removed), hence the protocol lives here.

For people, :func:`export_for_labeling` writes JSONL or CSV (``id, prompt, answer_a, answer_b, label``; no model
names) and :func:`import_labels` reads it back. In the file a label is ``A``/``B``/``tie`` (also ``0``/``1``/``-1``,
``=``; case-insensitive); an empty cell means "not labelled yet". Import validates ids (unknown or duplicated ids are
errors), accepts partial labelling and ties, and never drops a row: every comparison comes back, unlabelled ones with
``label = None``. :func:`to_preference_pairs` turns labelled rows into ``prompt/chosen/rejected`` pairs, which every
reward trainer here accepts (ties and unlabelled rows are counted, not used: Bradley–Terry has no tie term).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path

from ..utils.atomic import atomic_write_text
from .comparisons import COMPARISON_COLUMNS

TIE = -1
VALID_LABELS = (0, 1, TIE)
EXPORT_COLUMNS = ("id", "prompt", "answer_a", "answer_b", "label")
_LABEL_SPELLINGS = {
    "a": 0, "0": 0,
    "b": 1, "1": 1,
    "tie": TIE, "-1": TIE, "=": TIE, "t": TIE, "same": TIE,
}


# ----------------------------------------------------------------------------------------------------------------
# Judges
# ----------------------------------------------------------------------------------------------------------------
def check_judge_labels(labels, expected: int, name: str = "judge") -> list[int]:
    """A judge's output as a list of ``expected`` labels in {0, 1, TIE}; a clear error otherwise."""
    if labels is None:
        raise ValueError(f"The {name} returned None instead of {expected} labels.")
    labels = list(labels)
    if len(labels) != expected:
        raise ValueError(f"The {name} returned {len(labels)} labels for {expected} comparisons.")
    out = []
    for i, label in enumerate(labels):
        if isinstance(label, bool) or label not in VALID_LABELS:
            raise ValueError(
                f"The {name} returned {label!r} for comparison {i}; labels must be 0 (first answer better), "
                f"1 (second answer better) or {TIE} (tie / no preference)."
            )
        out.append(int(label))
    return out


class RewardJudge:
    """A pairwise judge from a reward: a reward model (path or instance), a ``RewardEnsemble``, a verifier or any
    TRL reward function ``f(prompts, completions, **kw) -> list[float]`` (e.g. the testbed's ``gold_reward_fn``).

    The answer with the higher reward wins; a difference of at most ``tie_threshold`` is a tie. ``flip_rate`` flips
    each decided label with that probability (seeded by ``seed``): the testbed's model of noisy "AI trainers".

    Args:
        reward_funcs, reward_processing_classes, reward_weights: as for
            :class:`~trl_extras.rewards.functions.RewardFunctions` (the one scoring path).
        tie_threshold: ``|r(a) − r(b)| <= tie_threshold`` is a tie (``TIE``). 0: only exact ties.
        flip_rate: probability in [0, 0.5] of flipping a decided label.
        seed: seed of the flips.
    """

    def __init__(self, reward_funcs, reward_processing_classes=None, reward_weights=None, tie_threshold: float = 0.0,
                 flip_rate: float = 0.0, seed: int = 0, batch_size: int = 64):
        from ..rewards.functions import RewardFunctions

        if tie_threshold < 0:
            raise ValueError(f"tie_threshold must be >= 0, got {tie_threshold}.")
        if not 0.0 <= flip_rate <= 0.5:
            raise ValueError(f"flip_rate must be in [0, 0.5], got {flip_rate}.")
        self.rewards = RewardFunctions(reward_funcs, reward_processing_classes, reward_weights, batch_size=batch_size)
        self.tie_threshold = float(tie_threshold)
        self.flip_rate = float(flip_rate)
        self._rng = random.Random(seed)
        self.__name__ = "reward_judge(" + ",".join(self.rewards.names) + ")"

    def judge(self, prompts: list, completions: list, shuffle_order: bool = True) -> list[int]:
        """``completions[i] = [a, b]``; returns 0 / 1 / TIE per prompt. A reward has no position bias, so
        ``shuffle_order`` (TRL's guard against it for LLM judges) changes nothing here."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion pairs.")
        if any(len(pair) != 2 for pair in completions):
            raise ValueError("Each entry of `completions` must be a pair [answer_a, answer_b].")
        if not prompts:
            return []
        both = self.rewards(list(prompts) * 2, [p[0] for p in completions] + [p[1] for p in completions]).total
        n = len(prompts)
        labels = []
        for ra, rb in zip(both[:n].tolist(), both[n:].tolist()):
            if abs(ra - rb) <= self.tie_threshold:
                labels.append(TIE)
                continue
            label = 0 if ra > rb else 1
            if self.flip_rate and self._rng.random() < self.flip_rate:
                label = 1 - label
            labels.append(label)
        return labels

    __call__ = judge


def _judge_fn(judge):
    fn = getattr(judge, "judge", None)
    if callable(fn):
        return fn
    if callable(judge):
        return judge
    raise TypeError(f"A judge must have a `judge(prompts, completions)` method or be callable, got {type(judge).__name__}.")


def label_comparisons(comparisons, judge, batch_size: int | None = None):
    """Add a ``label`` column (0 / 1 / TIE) from a judge. ``judge`` is a TRL-style pairwise judge (an object with
    ``judge(prompts, completions_pairs, shuffle_order=...)``) or a callable with the same signature.

    Its output is validated per batch (length and values); ``batch_size`` None sends everything at once.
    """
    if len(comparisons) == 0:
        raise ValueError("No comparisons to label.")
    fn = _judge_fn(judge)
    name = getattr(judge, "__name__", type(judge).__name__)
    prompts, a, b = list(comparisons["prompt"]), list(comparisons["answer_a"]), list(comparisons["answer_b"])
    step = batch_size or len(prompts)
    labels = []
    for start in range(0, len(prompts), step):
        sl = slice(start, start + step)
        out = fn(prompts[sl], [list(p) for p in zip(a[sl], b[sl])])
        labels += check_judge_labels(out, len(prompts[sl]), name=f"judge {name!r}")
    if "label" in comparisons.column_names:
        comparisons = comparisons.remove_columns("label")
    return comparisons.add_column("label", labels)


# ----------------------------------------------------------------------------------------------------------------
# Files for people
# ----------------------------------------------------------------------------------------------------------------
def _cell(value) -> str:
    """Text of a prompt/answer for a file: strings as they are, conversations as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _label_cell(label) -> str:
    return "" if label is None else {0: "A", 1: "B", TIE: "tie"}[int(label)]


def _file_format(path, format: str | None) -> str:
    fmt = (format or Path(path).suffix.lstrip(".")).lower()
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"Labelling files are .jsonl or .csv; got {str(path)!r} (pass format='jsonl' or 'csv').")
    return fmt


def export_for_labeling(comparisons, path: str | os.PathLike, format: str | None = None) -> str:
    """Write a file annotators fill in: ``id, prompt, answer_a, answer_b, label`` (label empty unless the
    comparisons already carry one). No model names or origins. JSONL or CSV by the file's extension."""
    fmt = _file_format(path, format)
    missing = [c for c in ("id", "prompt", "answer_a", "answer_b") if c not in comparisons.column_names]
    if missing:
        raise ValueError(f"Comparisons lack column(s) {missing}; they have {comparisons.column_names}.")
    if len(comparisons) == 0:
        raise ValueError("No comparisons to export.")
    labels = comparisons["label"] if "label" in comparisons.column_names else [None] * len(comparisons)
    rows = [
        {"id": i, "prompt": _cell(p), "answer_a": _cell(a), "answer_b": _cell(b), "label": _label_cell(lab)}
        for i, p, a, b, lab in zip(
            comparisons["id"], comparisons["prompt"], comparisons["answer_a"], comparisons["answer_b"], labels
        )
    ]
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    atomic_write_text(path, text)
    return str(path)


def parse_label(value, where: str):
    """A file's label cell → 0 / 1 / TIE, or None when empty; a clear error naming ``where`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: label {value!r} is not one of A, B, tie.")
    if isinstance(value, int):
        if value in VALID_LABELS:
            return value
        raise ValueError(f"{where}: label {value!r} is not one of A (0), B (1), tie (-1).")
    text = str(value).strip().lower()
    if text == "":
        return None
    if text not in _LABEL_SPELLINGS:
        raise ValueError(f"{where}: label {value!r} is not one of A, B, tie (or 0, 1, -1); leave it empty if unsure.")
    return _LABEL_SPELLINGS[text]


def _read_rows(path, fmt) -> list[tuple[int, dict]]:
    """(line number, row dict) of a labelling file."""
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheet programs prepend a BOM
        if fmt == "jsonl":
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not valid JSON ({err.msg}); fix or restore the line.") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object with an 'id' and a 'label'.")
                rows.append((n, row))
        else:
            reader = csv.DictReader(f)
            missing = [c for c in ("id", "label") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: the CSV header lacks column(s) {missing}; it has {reader.fieldnames}.")
            for row in reader:
                rows.append((reader.line_num, row))
    return rows


def import_labels(path: str | os.PathLike, comparisons=None, format: str | None = None):
    """Read a labelling file back. Returns a ``datasets.Dataset`` with every row and a ``label`` column (0 / 1 /
    TIE, None where not labelled yet).

    With ``comparisons`` (the dataset that was exported) the file's ids are checked against it and prompt, answers
    and origins come from ``comparisons`` (an accidental edit of an answer in the file changes nothing); rows of
    ``comparisons`` that the file lacks come back unlabelled. Without it, prompt and answers come from the file.

    Errors (naming the line and id): a row without an id, an id not in ``comparisons``, an id twice, a label other
    than A/B/tie, a file that is not JSONL/CSV or not readable.
    """
    from datasets import Dataset

    fmt = _file_format(path, format)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No labels file at {str(path)!r}.")
    rows = _read_rows(path, fmt)
    known = None if comparisons is None else {i: k for k, i in enumerate(comparisons["id"])}
    labels: dict[str, object] = {}
    file_rows: dict[str, dict] = {}
    for n, row in rows:
        where = f"{path}:{n}"
        rid = row.get("id")
        rid = None if rid is None else str(rid).strip()
        if not rid:
            raise ValueError(f"{where}: row without an id; ids must be kept as exported.")
        if rid in labels:
            raise ValueError(f"{where}: id {rid!r} appears twice; keep one row per id.")
        if known is not None and rid not in known:
            raise ValueError(f"{where}: unknown id {rid!r}: it is not among the {len(known)} exported comparisons.")
        labels[rid] = parse_label(row.get("label"), f"{where} (id {rid!r})")
        file_rows[rid] = row
    if comparisons is None:
        for rid, row in file_rows.items():
            missing = [c for c in ("prompt", "answer_a", "answer_b") if c not in row]
            if missing:
                raise ValueError(f"{path}: row {rid!r} lacks {missing}; pass `comparisons` to import a bare id/label file.")
        columns = {
            "id": list(file_rows),
            "prompt": [file_rows[r]["prompt"] for r in file_rows],
            "answer_a": [file_rows[r]["answer_a"] for r in file_rows],
            "answer_b": [file_rows[r]["answer_b"] for r in file_rows],
        }
    else:
        keep = [c for c in COMPARISON_COLUMNS if c in comparisons.column_names]
        columns = {c: list(comparisons[c]) for c in keep}
    columns["label"] = [labels.get(rid) for rid in columns["id"]]
    if not columns["id"]:
        raise ValueError(f"{path} holds no rows.")
    return Dataset.from_dict(columns)


def label_counts(labelled) -> dict:
    """``{"labelled", "unlabelled", "ties", "a", "b"}`` counts of a labelled comparisons dataset."""
    labels = list(labelled["label"])
    return {
        "labelled": sum(lab is not None for lab in labels),
        "unlabelled": sum(lab is None for lab in labels),
        "ties": sum(lab == TIE for lab in labels),
        "a": sum(lab == 0 for lab in labels),
        "b": sum(lab == 1 for lab in labels),
    }


def policy_win_rate(labelled) -> float | None:
    """Share of labelled comparisons the policy's answer won (ties count half); None without origins or labels."""
    if "origin_a" not in labelled.column_names:
        return None
    wins, n = 0.0, 0
    for lab, origin_a in zip(labelled["label"], labelled["origin_a"]):
        if lab is None:
            continue
        n += 1
        if lab == TIE:
            wins += 0.5
        elif (lab == 0) == (origin_a == "policy"):
            wins += 1.0
    return wins / n if n else None


def to_preference_pairs(labelled):
    """``id, prompt, chosen, rejected`` (+ ``chosen_origin`` when origins are known) from the decided rows.

    Ties and unlabelled rows carry no Bradley–Terry preference and are left out; their counts are in
    ``dataset.info.description`` (JSON) so nothing disappears unnoticed.
    """
    from datasets import Dataset

    if "label" not in labelled.column_names:
        raise ValueError("The comparisons have no 'label' column: label them first (judge or import_labels).")
    has_origin = "origin_a" in labelled.column_names
    cols = {"id": [], "prompt": [], "chosen": [], "rejected": []}
    if has_origin:
        cols["chosen_origin"] = []
    for k, lab in enumerate(labelled["label"]):
        if lab is None or lab == TIE:
            continue
        row = labelled[k]
        a, b = row["answer_a"], row["answer_b"]
        chosen, rejected = (a, b) if lab == 0 else (b, a)
        cols["id"].append(row["id"])
        cols["prompt"].append(row["prompt"])
        cols["chosen"].append(chosen)
        cols["rejected"].append(rejected)
        if has_origin:
            cols["chosen_origin"].append(row["origin_a"] if lab == 0 else row["origin_b"])
    ds = Dataset.from_dict(cols)
    ds.info.description = json.dumps(label_counts(labelled))
    return ds


def write_jsonl(path: str | os.PathLike, dataset) -> None:
    """Every row of ``dataset`` as one JSON line, written atomically (labels, origins and all)."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in dataset.to_list()))


def read_jsonl(path: str | os.PathLike):
    """A ``datasets.Dataset`` from a file written by :func:`write_jsonl`."""
    from datasets import Dataset

    text = Path(path).read_text(encoding="utf-8")
    return Dataset.from_list([json.loads(line) for line in text.splitlines() if line.strip()])
