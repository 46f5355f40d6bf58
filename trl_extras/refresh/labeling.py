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
``label = None``. Files are UTF-8 (a UTF-8 or UTF-16 byte-order mark is read too; anything else is an error naming the
file). A CSV row with more or fewer cells than the header is an error naming the row (an unquoted comma would
otherwise shift the label into another column). CSV cells that a spreadsheet would run as a formula (starting with
``=``, ``+``, ``-``, ``@``, tab or CR: OWASP's "CSV injection") are written with a leading ``'`` and read back
unchanged, with or without it. :func:`to_preference_pairs` turns labelled rows into ``prompt/chosen/rejected``
pairs, which every reward trainer here accepts (ties and unlabelled rows are counted, not used: Bradley–Terry has no
tie term).
"""

from __future__ import annotations

import codecs
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


def judge_function(judge):
    """The callable that labels pairs: a TRL pairwise judge's ``judge`` method, or ``judge`` itself when it is
    callable; a ``TypeError`` otherwise (the refresh callback checks this at construction)."""
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
    fn = judge_function(judge)
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


# OWASP "CSV injection": a cell starting with one of these is run as a formula (or a DDE command) by Excel, LibreOffice
# and Google Sheets when the file is opened; model outputs are untrusted text, so such cells get a leading "'".
_FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(text: str) -> str:
    """``text`` safe for a spreadsheet cell: a ``'`` is put before a cell that starts (after any ``'``) with a formula
    trigger. Reversed exactly by :func:`restore_formula` (also when a spreadsheet dropped the ``'`` on saving)."""
    # "after any '": a text that already starts with "'=" gets a second "'", so the round trip is exact
    return "'" + text if text.lstrip("'").startswith(_FORMULA_TRIGGERS) else text


def restore_formula(text: str) -> str:
    """Inverse of :func:`neutralise_formula`: drop one ``'`` before ``'``s followed by a formula trigger."""
    stripped = text.lstrip("'")
    return text[1:] if stripped != text and stripped.startswith(_FORMULA_TRIGGERS) else text


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
        # "\r\n" (RFC 4180, what spreadsheets write): the writer quotes a cell only if it holds a character of the
        # line terminator, so with "\n" an answer holding a bare "\r" was left unquoted and split its row on reading
        writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows({k: neutralise_formula(str(v)) for k, v in r.items()} for r in rows)
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


def read_labels_text(path) -> str:
    """The text of a labelling file: UTF-8, with or without a byte-order mark; UTF-16 with its byte-order mark (a
    spreadsheet's "Unicode" export). Anything else is a ``ValueError`` naming the file, what it seems to be and how
    to save it as UTF-8, instead of a bare ``UnicodeDecodeError`` from deep inside the reader."""
    data = Path(path).read_bytes()
    how = ("save it again as 'CSV UTF-8 (Comma delimited)' (Excel) or 'Text CSV' with character set "
           "'Unicode (UTF-8)' (LibreOffice)")
    if data.startswith(b"PK\x03\x04") or data.startswith(b"\xd0\xcf\x11\xe0"):
        raise ValueError(
            f"{path} is a spreadsheet workbook (.xlsx/.xls/.ods), not a text file, although its name says otherwise: "
            f"labelling files must be UTF-8 text; {how}."
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not data.startswith(codecs.BOM_UTF32_LE):
        encoding = "utf-16"  # the codec reads the byte-order mark and drops it
    elif b"\x00" in data:  # UTF-16 without a byte-order mark: a NUL byte next to every ASCII letter
        raise ValueError(
            f"{path} contains NUL bytes: it is UTF-16 without a byte-order mark, or not a text file. Labelling "
            f"files must be UTF-8; {how}."
        )
    else:
        encoding = "utf-8-sig"  # -sig: spreadsheet programs prepend a UTF-8 byte-order mark
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        guess = "" if encoding == "utf-16" else (
            " (probably Windows-1252/Latin-1: Excel's plain 'CSV (Comma delimited)')")
        raise ValueError(
            f"{path} is not valid {encoding.upper().replace('-SIG', '')} text: byte 0x{data[err.start]:02x} at line "
            f"{line} cannot be decoded{guess}. Labelling files must be UTF-8 (a byte-order mark is fine); {how}, "
            "or convert it, e.g. `iconv -f cp1252 -t utf-8 FILE > NEW`."
        ) from None
    return text


def _read_rows(path, fmt) -> list[tuple[int, dict]]:
    """(line number, row dict) of a labelling file."""
    rows = []
    f = io.StringIO(read_labels_text(path), newline="")  # newline="": the csv module handles line ends itself
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
        return rows
    reader = csv.reader(f)
    header = next(reader, [])
    missing = [c for c in ("id", "label") if c not in header]
    if missing:
        tabbed = len(header) == 1 and "\t" in header[0]
        tabs = " (it looks tab-separated: save it as CSV, comma-separated)" if tabbed else ""
        raise ValueError(f"{path}: the CSV header lacks column(s) {missing}; it has {header}{tabs}.")
    for number, cells in enumerate(reader, start=1):
        if not any(c.strip() for c in cells):
            continue  # an empty line, or an empty row a spreadsheet wrote
        if len(cells) != len(header):
            # csv.DictReader would put extra cells under the key None and shift nothing back: an unquoted comma in
            # an answer moves the label one column right, so the annotator's A was read from the answer_b cell.
            rid = cells[header.index("id")] if header.index("id") < len(cells) else "?"
            raise ValueError(
                f"{path}: row {number} (line {reader.line_num}, id {rid!r}) has {len(cells)} cells but the header has "
                f"{len(header)} ({', '.join(header)}). A comma inside a cell that is not in double quotes splits it, "
                "or a cell is missing: put such a cell in double quotes (spreadsheet programs do when saving as CSV) "
                "and fix the row. Nothing was imported."
            )
        rows.append((reader.line_num, {k: restore_formula(v) for k, v in zip(header, cells)}))
    return rows


def import_labels(path: str | os.PathLike, comparisons=None, format: str | None = None):
    """Read a labelling file back. Returns a ``datasets.Dataset`` with every row and a ``label`` column (0 / 1 /
    TIE, None where not labelled yet).

    With ``comparisons`` (the dataset that was exported) the file's ids are checked against it and prompt, answers
    and origins come from ``comparisons`` (an accidental edit of an answer in the file changes nothing); rows of
    ``comparisons`` that the file lacks come back unlabelled. Without it, prompt and answers come from the file.

    Errors (naming the file, line and id): a row without an id, an id not in ``comparisons``, an id twice, a label
    other than A/B/tie, a CSV row with more or fewer cells than the header, a file that is not JSONL/CSV, not UTF-8
    (or UTF-16 with a byte-order mark), or a spreadsheet workbook under a text file's name.
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
