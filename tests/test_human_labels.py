"""Human labels (issue 22, item 5): hand-edited CSVs, spreadsheet formulas, encodings, and `iterate --labeler people`
keeping the file the person edits as the source of truth until the refresh has succeeded.

One parametrized row per probed case; every row of the four batteries fails on the code before this change (a
silent mis-read, a live formula, a bare UnicodeDecodeError, a stale labelled.jsonl). The guard tests at the end
pin behaviour that already held and must keep holding.
"""

import csv
import io
import json
import re
import zipfile

import pytest
from datasets import Dataset

from trl_extras.refresh.comparisons import pair_up
from trl_extras.refresh.iterate import IterateConfig, Iteration, _done, _finish
from trl_extras.refresh.labeling import (
    TIE,
    export_for_labeling,
    import_labels,
    to_preference_pairs,
)

HEADER = "id,prompt,answer_a,answer_b,label"


def _comparisons(n=3, answers=None):
    prompts = [f"{i} {i + 1} 3 >" for i in range(n)]
    policy = answers or [f" 3 {i} {i + 1}" for i in range(n)]
    baseline = [f" {i} 3" for i in range(n)]
    rows, dropped = pair_up(prompts, policy, baseline, seed=0, id_prefix="r0-")
    assert dropped == 0
    return Dataset.from_dict(rows)


# ------------------------------------------------------------------------------------------------ 1. cell counts
# Each row: what a person typed for data row 2 of 3 (row 1 and 3 are well-formed, label A). Without the check the
# first two are read silently wrong: the annotator's A becomes B ("1" from the split answer), or becomes "unlabelled".
SHIFTED_ROWS = {
    "unquoted comma in answer_b reads the annotator's A as B": "{id},p,x,3,1,A",
    "unquoted comma in answer_a: label read from answer_b (unclear error)": "{id},p,1,2,y,A",
    "answers merged into one cell: label read as missing": "{id},p,x y,A",
    "trailing label comma deleted with the label": "{id},p,x,y",
}


@pytest.mark.parametrize("row", list(SHIFTED_ROWS.values()), ids=list(SHIFTED_ROWS))
def test_a_csv_row_with_more_or_fewer_cells_than_the_header_is_an_error_naming_file_and_row(tmp_path, row):
    ds = _comparisons(3)
    ids = ds["id"]
    path = tmp_path / "to_label.csv"
    lines = [HEADER, f"{ids[0]},p,x,y,A", row.format(id=ids[1]), f"{ids[2]},p,x,y,A"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": row 2 \(line 3, id '" + ids[1] + r"'\) has \d cells "
                       r"but the header has 5.*double quotes"):
        import_labels(path, comparisons=ds)


def test_quoted_commas_and_blank_rows_are_still_read(tmp_path):
    ds = _comparisons(2)
    ids = ds["id"]
    path = tmp_path / "to_label.csv"
    path.write_text(f'{HEADER}\n{ids[0]},p,"3,1","x, y",A\n,,,,\n\n{ids[1]},p,x,y,b\n', encoding="utf-8")
    assert import_labels(path, comparisons=ds)["label"] == [0, 1]


# ------------------------------------------------------------------------------------------------ 2. CSV injection
# OWASP's list of cell starts that spreadsheets run as formulas / DDE: = + - @ tab CR.
PAYLOADS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1", "=cmd|' /C calc'!A0"]


@pytest.mark.parametrize("payload", PAYLOADS, ids=["equals", "plus", "minus", "at", "tab", "cr", "dde"])
def test_csv_export_neutralises_formulas_and_reads_them_back_unchanged(tmp_path, payload):
    ds = _comparisons(2, answers=[payload, " 3 1 2"])
    ds = ds.map(lambda r: {"prompt": payload + " >"})
    path = tmp_path / "to_label.csv"
    export_for_labeling(ds, path)
    cells = [c for row in csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")) for c in row]
    live = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert not live, f"cells a spreadsheet would run as formulas: {live}"
    back = import_labels(path)  # without the comparisons: prompt and answers come from the file itself
    assert back["prompt"] == ds["prompt"] and back["answer_a"] == ds["answer_a"] and back["answer_b"] == ds["answer_b"]


# ------------------------------------------------------------------------------------------------ 3. encodings
def _labelled_csv_text(ds, label="A"):
    return HEADER + "\n" + "".join(f'{i},"p é ‘q’",x,y,{label}\n' for i in ds["id"])


def _xlsx_bytes(_text):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:  # what an .xlsx is: a zip of XML parts
        z.writestr("[Content_Types].xml", "<Types/>" * 50)
        z.writestr("xl/worksheets/sheet1.xml", "<worksheet><sheetData/></worksheet>" * 50)
    return buf.getvalue()


BAD_ENCODINGS = {
    "cp1252 csv (Excel's plain CSV)": ("csv", lambda t: t.encode("cp1252"), r"not valid UTF-8 text.*Windows-1252.*UTF-8"),
    "cp1252 jsonl": ("jsonl", None, r"not valid UTF-8 text.*UTF-8"),
    "utf-16 without a byte-order mark": ("csv", lambda t: t.encode("utf-16-le"), r"NUL bytes.*UTF-16.*UTF-8"),
    "xlsx saved under a .csv name": ("csv", _xlsx_bytes, r"spreadsheet workbook.*UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_ENCODINGS.values()), ids=list(BAD_ENCODINGS))
def test_a_file_that_is_not_utf8_is_an_error_naming_the_file_and_the_encoding(tmp_path, case):
    ext, encode, message = case
    ds = _comparisons(2)
    path = tmp_path / f"to_label.{ext}"
    if ext == "jsonl":
        text = "".join(json.dumps({"id": i, "prompt": "p é", "label": "A"}, ensure_ascii=False) + "\n" for i in ds["id"])
        path.write_bytes(text.encode("cp1252"))
    else:
        path.write_bytes(encode(_labelled_csv_text(ds)))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        import_labels(path, comparisons=ds)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be-bom", "utf-8-sig"])
def test_utf16_and_utf8_with_a_byte_order_mark_are_read(tmp_path, codec):
    ds = _comparisons(2)
    path = tmp_path / "to_label.csv"
    text = _labelled_csv_text(ds, label="B")
    data = b"\xfe\xff" + text.encode("utf-16-be") if codec == "utf-16-be-bom" else text.encode(codec)
    path.write_bytes(data)
    back = import_labels(path)
    assert back["label"] == [1, 1] and back["prompt"] == ["p é ‘q’"] * 2


# ------------------------------------------------------------------------------------------------ 4. iterate + people
def _fake_iteration(monkeypatch, tmp_path, calls, fail_refresh=None, **config):
    """An Iteration whose model steps are stand-ins (the label logic under test is the real one): the refresh
    refuses zero usable pairs exactly as `refresh_reward_model` does, and can crash once (`fail_refresh`)."""
    ds = _comparisons(6)

    def refresh(self, k, reward_model, labelled, replay):
        out = self.root / f"round_{k}" / "reward_model"
        if _done(out):
            return _done(out)["model"]
        if not len(to_preference_pairs(labelled)):
            raise ValueError("A refresh needs at least one usable preference pair, got 0.")
        if fail_refresh and not calls:
            calls.append(None)
            raise fail_refresh
        calls.append(list(labelled["label"]))
        return _finish(out, {"model": "rm1", "labels": list(labelled["label"])})["model"]

    monkeypatch.setattr(Iteration, "prompts", lambda self: (["rl"], ds["prompt"]))
    monkeypatch.setattr(Iteration, "sft_path", lambda self: "sft")
    monkeypatch.setattr(Iteration, "initial_reward_model", lambda self: "rm0")
    monkeypatch.setattr(Iteration, "replay_pairs", lambda self: None)
    monkeypatch.setattr(Iteration, "ppo", lambda self, k, policy, rm, prompts: f"policy{k}")
    monkeypatch.setattr(Iteration, "comparisons", lambda self, k, policy, baseline, prompts: ds)
    monkeypatch.setattr(Iteration, "refresh", refresh)
    cfg = dict(output_dir=str(tmp_path / "it"), rounds=1, num_pairs=6, labeler="people")
    return lambda: Iteration(IterateConfig(**{**cfg, **config})).run()


def _label(path, labels):
    """A person edits the file: labels[i] for row i (None: keep what is there)."""
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows = [dict(r, label=lab) if lab is not None else r for r, lab in zip(rows, labels)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _all_ties_then_relabelled(run, to_label, calls, capsys):
    _label(to_label, ["tie"] * 6)
    result = run()  # before: labelled.jsonl written, then "needs at least one usable preference pair" for ever
    out = capsys.readouterr().out
    assert result["status"] == "waiting_for_labels" and result["reason"] == "only_ties"
    assert f"all 6 labelled comparisons in {to_label} are ties" in out and "to A or B" in out
    assert "run the same command again" in out and calls == []
    _label(to_label, ["A", "tie", "B", None, None, None])
    assert run()["status"] == "done"
    assert calls == [[0, TIE, 1, TIE, TIE, TIE]]


def _labels_added_after_the_fraction_was_reached(run, to_label, calls, capsys):
    _label(to_label, ["A", "B", "A", "", "", ""])
    with pytest.raises(RuntimeError, match="killed"):
        run()  # enough labels (50%): labelled.jsonl is written, then the refresh is interrupted
    _label(to_label, [None, None, None, "B", "tie", "A"])  # the person goes on labelling meanwhile
    assert run()["status"] == "done"
    assert calls[-1] == [0, 1, 0, 1, TIE, 0]


PEOPLE_CASES = {
    "every label a tie, then relabelled": (_all_ties_then_relabelled, {}, None),
    "labels added after min_labeled_fraction, refresh interrupted": (
        _labels_added_after_the_fraction_was_reached, {"min_labeled_fraction": 0.5}, RuntimeError("killed")),
}


@pytest.mark.parametrize("case", list(PEOPLE_CASES.values()), ids=list(PEOPLE_CASES))
def test_iterate_people_file_stays_the_source_of_truth_until_the_refresh_succeeded(monkeypatch, tmp_path, capsys, case):
    scenario, config, fail = case
    calls = []
    run = _fake_iteration(monkeypatch, tmp_path, calls, fail_refresh=fail, **config)
    first = run()
    assert first["status"] == "waiting_for_labels" and first["labelled"] == 0
    to_label = tmp_path / "it" / "round_0" / "to_label.jsonl"
    capsys.readouterr()
    scenario(run, to_label, calls, capsys)


def test_iterate_judge_that_only_ties_says_what_to_do(monkeypatch, tmp_path):
    run = _fake_iteration(monkeypatch, tmp_path, [], labeler="judge")
    monkeypatch.setattr(Iteration, "judge", lambda self: (lambda prompts, pairs, **kw: [TIE] * len(prompts)))
    with pytest.raises(ValueError, match=r"labelled all 6 comparisons as ties.*delete .*round_0/labelled.jsonl"):
        run()


# ------------------------------------------------------------------------------------------------ guards
# (these held before the change too; they pin what must not regress)
def test_after_the_refresh_succeeded_labelled_jsonl_is_the_record(monkeypatch, tmp_path):
    calls = []
    run = _fake_iteration(monkeypatch, tmp_path, calls)
    run()
    to_label = tmp_path / "it" / "round_0" / "to_label.jsonl"
    _label(to_label, ["A"] * 6)
    assert run()["status"] == "done" and calls == [[0] * 6]
    _label(to_label, ["B"] * 6)  # edits after the refresh: that round is done, its record stays
    assert run()["status"] == "done" and calls == [[0] * 6]
    record = [json.loads(x)["label"] for x in (tmp_path / "it" / "round_0" / "labelled.jsonl").read_text().splitlines()]
    assert record == [0] * 6


def test_a_deleted_to_label_file_is_exported_again_with_the_labels_it_had(monkeypatch, tmp_path):
    run = _fake_iteration(monkeypatch, tmp_path, [], fail_refresh=RuntimeError("killed"))
    run()
    to_label = tmp_path / "it" / "round_0" / "to_label.jsonl"
    _label(to_label, ["A", "B", "", "", "", ""])
    result = run()  # not enough labels (100% needed): nothing written but the person's file
    assert result["labelled"] == 2
    _label(to_label, ["A", "B", "tie", "A", "A", "A"])
    with pytest.raises(RuntimeError, match="killed"):
        run()
    to_label.unlink()  # deleted by hand after the interrupted refresh
    assert run()["status"] == "done"
    assert [json.loads(x)["label"] for x in to_label.read_text().splitlines()] == ["A", "B", "tie", "A", "A", "A"]


@pytest.mark.parametrize("text", ["'=1", "''=1", "'", "it's", "'plain", "= spaced", "-", "", "=1", "@a", "\tx"])
def test_neutralise_and_restore_are_exact_inverses(text):
    from trl_extras.refresh.labeling import neutralise_formula, restore_formula

    assert restore_formula(neutralise_formula(text)) == text
    if not text.startswith("'"):  # a spreadsheet that dropped the "'" on saving: the original text comes back too
        assert restore_formula(text) == text
