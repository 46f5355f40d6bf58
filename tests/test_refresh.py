"""Refreshing the reward model on the policy's answers: comparisons, judges, files for people, the refresh itself."""

import csv
import json

import pytest
import torch
from datasets import Dataset
from helpers import cpu_config

from trl_extras.refresh.comparisons import collect_comparisons, pair_up
from trl_extras.refresh.labeling import (
    TIE,
    RewardJudge,
    check_judge_labels,
    export_for_labeling,
    import_labels,
    label_comparisons,
    label_counts,
    policy_win_rate,
    to_preference_pairs,
)
from trl_extras.refresh.refresh import RewardRefreshConfig, refresh_reward_model
from trl_extras.testbed import gold_reward_fn


def _comparisons(n=6, seed=0):
    prompts = [f"{i} {i + 1} 3 >" for i in range(n)]
    policy = [f" 3 {i} {i + 1}" for i in range(n)]
    baseline = [f" {i} 3" for i in range(n)]
    rows, dropped = pair_up(prompts, policy, baseline, seed=seed, id_prefix="r1-")
    assert dropped == 0
    return Dataset.from_dict(rows)


# ------------------------------------------------------------------------------------------------ comparisons
def test_pair_up_random_order_records_origin_and_stable_ids():
    prompts = [f"{i} 2 >" for i in range(200)]
    rows, _ = pair_up(prompts, ["p"] * 200, ["b"] * 200, seed=3)
    first_is_policy = [o == "policy" for o in rows["origin_a"]]
    assert 70 < sum(first_is_policy) < 130  # order is random, not fixed
    for a, b, oa, ob in zip(rows["answer_a"], rows["answer_b"], rows["origin_a"], rows["origin_b"]):
        assert {oa, ob} == {"policy", "baseline"}
        assert (a == "p") == (oa == "policy") and (b == "p") == (ob == "policy")
    again, _ = pair_up(prompts, ["p"] * 200, ["b"] * 200, seed=3)
    assert again["id"] == rows["id"] and len(set(rows["id"])) == 200
    other, _ = pair_up(prompts, ["p"] * 200, ["b"] * 200, seed=4)
    assert other["origin_a"] != rows["origin_a"]


def test_pair_up_drops_identical_answers_and_counts_them():
    rows, dropped = pair_up(["1 >", "2 >", "3 >"], [" 1", " 2", " 9"], [" 1", " 8", " 9"])
    assert dropped == 2 and rows["prompt"] == ["2 >"]
    with pytest.raises(ValueError, match="one of each per prompt"):
        pair_up(["1 >"], [" 1", " 2"], [" 1"])


def test_collect_comparisons_uses_both_models(tiny_paths):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    policy = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    prompts = [f"{i} 5 2 >" for i in range(8)]
    ds = collect_comparisons(policy, tiny_paths["policy"], prompts, num_pairs=6, processing_class=tok,
                             max_new_tokens=6, seed=1, id_prefix="r0-")
    assert set(ds.column_names) >= {"id", "prompt", "answer_a", "answer_b", "origin_a", "origin_b"}
    assert 1 <= len(ds) <= 6 and all(i.startswith("r0-") for i in ds["id"])
    note = json.loads(ds.info.description)
    assert note["num_prompts"] == 6 and note["identical_dropped"] == 6 - len(ds)
    again = collect_comparisons(policy, tiny_paths["policy"], prompts, num_pairs=6, processing_class=tok,
                                max_new_tokens=6, seed=1, id_prefix="r0-")
    assert again["id"] == ds["id"] and again["answer_a"] == ds["answer_a"]  # seeded: same rows, same ids
    with pytest.raises(ValueError, match="only 8 prompts are left"):
        collect_comparisons(policy, policy, prompts, num_pairs=9, processing_class=tok)


# ------------------------------------------------------------------------------------------------ judges
def test_reward_judge_prefers_higher_gold_with_ties_and_noise():
    judge = RewardJudge(gold_reward_fn)
    prompts = ["3 1 2 >", "3 1 2 >", "5 4 >"]
    pairs = [[" 1 2 3", " 3 2 1"], [" 3 2 1 0", " 1 2 3"], [" 4 5", " 4 5"]]
    assert judge.judge(prompts, pairs) == [0, 1, TIE]
    noisy = RewardJudge(gold_reward_fn, flip_rate=0.5, seed=0)
    labels = noisy.judge(["3 1 2 >"] * 400, [[" 1 2 3", " 3 2 1"]] * 400)
    assert 150 < labels.count(1) < 250  # flipped about half the time


def test_label_comparisons_validates_the_judge_output():
    ds = _comparisons(4)

    def short(prompts, completions, shuffle_order=True):
        return [0] * (len(prompts) - 1)

    def bad_value(prompts, completions, shuffle_order=True):
        return [0, 1, 2, 0]

    with pytest.raises(ValueError, match="returned 3 labels for 4 comparisons"):
        label_comparisons(ds, short)
    with pytest.raises(ValueError, match="returned 2 for comparison 2"):
        label_comparisons(ds, bad_value)
    with pytest.raises(ValueError, match="returned True"):
        check_judge_labels([True], 1)
    labelled = label_comparisons(ds, RewardJudge(gold_reward_fn))
    assert set(labelled["label"]) <= {0, 1, TIE} and len(labelled) == 4


# ------------------------------------------------------------------------------------------------ files for people
@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_export_edit_import_round_trip_as_a_person_would(tmp_path, ext):
    ds = _comparisons(6)
    path = tmp_path / f"to_label.{ext}"
    export_for_labeling(ds, path)
    text = path.read_text()
    assert "policy" not in text and "baseline" not in text and "origin" not in text  # no model names
    ids = ds["id"]
    # A person fills in labels in a text editor: A, b (lower case), tie, one left empty, one "1"; nothing else changes.
    wanted = {ids[0]: "A", ids[1]: "b", ids[2]: "tie", ids[4]: "1", ids[5]: "-1"}
    if ext == "jsonl":
        lines = []
        for line in text.splitlines():
            row = json.loads(line)
            row["label"] = wanted.get(row["id"], "")
            row["answer_a"] = row["answer_a"] + " (edited by mistake)"  # answers come from the comparisons, not the file
            lines.append(json.dumps(row))
        path.write_text("\n".join(lines) + "\n")
    else:
        rows = list(csv.DictReader(text.splitlines()))
        assert rows[0].keys() == {"id", "prompt", "answer_a", "answer_b", "label"}
        out = ["id,prompt,answer_a,answer_b,label"]
        for r in rows:
            out.append(f'{r["id"]},"{r["prompt"]}","{r["answer_a"]}","{r["answer_b"]}",{wanted.get(r["id"], "")}')
        path.write_text("\n".join(out) + "\n")
    back = import_labels(path, comparisons=ds)
    assert back["id"] == ids and back["answer_a"] == ds["answer_a"] and back["origin_a"] == ds["origin_a"]
    assert back["label"] == [0, 1, TIE, None, 1, TIE]
    assert label_counts(back) == {"labelled": 5, "unlabelled": 1, "ties": 2, "a": 1, "b": 2}
    pairs = to_preference_pairs(back)
    assert pairs["id"] == [ids[0], ids[1], ids[4]]
    assert pairs["chosen"][0] == ds["answer_a"][0] and pairs["rejected"][0] == ds["answer_b"][0]
    assert pairs["chosen"][1] == ds["answer_b"][1]
    assert json.loads(pairs.info.description)["unlabelled"] == 1
    # without the comparisons the file's own columns are used
    alone = import_labels(path)
    assert alone["label"] == back["label"] and "origin_a" not in alone.column_names


def test_import_refuses_unknown_duplicate_and_bad_labels(tmp_path):
    ds = _comparisons(3)
    path = tmp_path / "labels.jsonl"
    export_for_labeling(ds, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]

    def write(rows_):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows_))

    write(rows + [dict(rows[0], id="r1-99999-deadbeef", label="A")])
    with pytest.raises(ValueError, match="unknown id 'r1-99999-deadbeef'"):
        import_labels(path, comparisons=ds)
    write(rows + [dict(rows[1], label="B")])
    with pytest.raises(ValueError, match="appears twice"):
        import_labels(path, comparisons=ds)
    write([dict(rows[0], label="maybe")] + rows[1:])
    with pytest.raises(ValueError, match=r"labels.jsonl:1 .*'maybe' is not one of A, B, tie"):
        import_labels(path, comparisons=ds)
    write([dict(rows[0], label=2)] + rows[1:])
    with pytest.raises(ValueError, match="label 2 is not one of"):
        import_labels(path, comparisons=ds)
    write([{k: v for k, v in rows[0].items() if k != "id"}] + rows[1:])
    with pytest.raises(ValueError, match="without an id"):
        import_labels(path, comparisons=ds)
    with pytest.raises(ValueError, match=".jsonl or .csv"):
        export_for_labeling(ds, tmp_path / "labels.txt")
    # a file that lacks some rows: they come back unlabelled, never dropped
    write([dict(rows[0], label="A")])
    back = import_labels(path, comparisons=ds)
    assert back["id"] == ds["id"] and back["label"] == [0, None, None]


def test_policy_win_rate_counts_ties_half():
    ds = _comparisons(4)
    policy_is_a = [o == "policy" for o in ds["origin_a"]]
    labels = [0 if a else 1 for a in policy_is_a]  # the policy wins every comparison
    labels[3] = TIE
    assert policy_win_rate(ds.add_column("label", labels)) == pytest.approx(3.5 / 4)


# ------------------------------------------------------------------------------------------------ refresh
def _gold_pairs(n, seed):
    from trl_extras.testbed import clean_pairs

    return clean_pairs(n, flip_rate=0.0, seed=seed)


def _refresh_args(tmp_path, **kw):
    defaults = dict(per_device_train_batch_size=8, num_train_epochs=3, learning_rate=3e-3, max_length=64,
                    replay_ratio=0.5, calibration_size=64)
    return cpu_config(RewardRefreshConfig, tmp_path / "refresh", **{**defaults, **kw})


def test_refresh_trains_the_same_object_and_keeps_the_head(tiny_paths, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.scoring import RewardModelScorer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    scorer = RewardModelScorer(rm, tok)
    head_before = rm.score.weight.detach().clone()
    new, replay = _gold_pairs(16, seed=11), _gold_pairs(40, seed=12)
    report = refresh_reward_model(scorer, new, replay_pairs=replay, args=_refresh_args(tmp_path, num_train_epochs=1),
                                  eval_pairs=replay)
    assert scorer.model is rm  # in place
    assert not torch.equal(rm.score.weight, head_before)  # the head kept training from where it was...
    cos = torch.nn.functional.cosine_similarity(rm.score.weight.flatten(), head_before.flatten(), dim=0)
    assert cos > 0.5  # ...not re-initialised (a fresh random head would be near-orthogonal)
    assert report.num_new_pairs == 16 and report.num_replay_pairs == 8
    assert report.eval_accuracy_before is not None and report.eval_accuracy_after is not None
    assert set(report.metrics()) >= {"refresh/accuracy_before", "refresh/accuracy_after", "refresh/num_new_pairs"}


@pytest.mark.slow
def test_refresh_raises_accuracy_on_the_new_pairs(sft_policy_path, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft_policy_path)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(sft_policy_path, num_labels=1)  # RM = SFT + new head
    args = _refresh_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=16, learning_rate=2e-3)
    report = refresh_reward_model(rm, _gold_pairs(32, seed=11), replay_pairs=_gold_pairs(40, seed=12), args=args,
                                  processing_class=tok)
    assert report.accuracy_after > report.accuracy_before


def test_refresh_keeps_the_callers_rng_stream(tiny_paths, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    refresh_reward_model(rm, _gold_pairs(8, 1), args=_refresh_args(tmp_path, num_train_epochs=1), processing_class=tok)
    assert torch.equal(torch.rand(3), expected)


def test_refresh_ensemble_refreshes_every_member_and_recalibrates(tiny_paths, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.ensemble import RewardEnsemble

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    members = [AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1) for _ in range(2)]
    torch.manual_seed(5)
    members[1].score.weight.data.normal_()
    ens = RewardEnsemble(members, processing_class=tok, calibration={"mean": [0.0, 0.0], "std": [1.0, 1.0]})
    heads = [m.score.weight.detach().clone() for m in members]
    report = refresh_reward_model(ens, _gold_pairs(16, 3), args=_refresh_args(tmp_path, num_train_epochs=1))
    assert ens.models[0] is members[0] and ens.models[1] is members[1]
    assert all(not torch.equal(m.score.weight, h) for m, h in zip(members, heads))
    assert report.calibration is not None and ens.calibration["std"] != [1.0, 1.0]
    assert report.calibration["num_items"] == 2 * 16  # chosen and rejected of the 16 training pairs
    assert len(report.member_accuracy_before) == len(report.member_accuracy_after) == 2


def test_refresh_bad_inputs(tiny_paths, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    ds = _comparisons(3)
    all_ties = to_preference_pairs(ds.add_column("label", [TIE] * 3))
    with pytest.raises(ValueError, match="at least one usable preference pair, got 0"):
        refresh_reward_model(rm, all_ties, args=_refresh_args(tmp_path), processing_class=tok)
    with pytest.raises(ValueError, match="processing_class"):
        refresh_reward_model(rm, _gold_pairs(4, 1), args=_refresh_args(tmp_path))
    with pytest.raises(TypeError, match="not a path"):
        refresh_reward_model(tiny_paths["reward"], _gold_pairs(4, 1), args=_refresh_args(tmp_path))
    with pytest.raises(ValueError, match="replay_ratio must be >= 0"):
        _refresh_args(tmp_path, replay_ratio=-1)
    with pytest.raises(ValueError, match="lacks column"):
        refresh_reward_model(rm, Dataset.from_dict({"prompt": ["1 >"], "chosen": [" 1"]}), args=_refresh_args(tmp_path),
                             processing_class=tok)


def test_conversational_comparisons_round_trip_through_csv(tmp_path):
    prompts = [[{"role": "user", "content": f"{i} 1 >"}] for i in range(3)]
    policy = [[{"role": "assistant", "content": f" 1 {i}, with a comma"}] for i in range(3)]
    baseline = [[{"role": "assistant", "content": f' "{i}"\nnew line'}] for i in range(3)]
    ds = Dataset.from_dict(pair_up(prompts, policy, baseline, seed=1)[0])
    path = tmp_path / "chat.csv"
    export_for_labeling(ds, path)
    rows = list(csv.DictReader(path.read_text().splitlines(keepends=True)))
    assert json.loads(rows[0]["prompt"]) == prompts[0]  # conversations are written as JSON text
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([dict(r, label="B") for r in rows])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # saved by a spreadsheet program: a UTF-8 BOM first
    back = import_labels(path, comparisons=ds)
    assert back["label"] == [1, 1, 1]
    pairs = to_preference_pairs(back)
    assert pairs["chosen"] == ds["answer_b"] and pairs["prompt"] == prompts


def test_refresh_lora_ensemble_trains_every_adapter_and_its_head(tiny_paths, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.ensemble import RewardEnsemble

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    base = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    torch.manual_seed(0)
    cfg = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, cfg, adapter_name="m0")
    model.add_adapter("m1", cfg)
    ens = RewardEnsemble(model.eval(), processing_class=tok)
    heads = {n: model.base_model.model.score.modules_to_save[n].weight.detach().clone() for n in ("m0", "m1")}
    loras = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    report = refresh_reward_model(ens, _gold_pairs(16, 3), args=_refresh_args(tmp_path, num_train_epochs=1))
    for n in ("m0", "m1"):
        assert not torch.equal(model.base_model.model.score.modules_to_save[n].weight, heads[n])
    changed = {n.split(".")[-2] for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, loras[n])}
    assert changed == {"m0", "m1"}  # both adapters trained, in place
    assert len(report.member_accuracy_after) == 2 and ens.calibration is not None


def test_refresh_accepts_an_empty_answer_but_not_none(tiny_paths, tmp_path):
    """A policy may answer nothing (EOS at once): such a comparison is valid data (found by the benchmark, where it
    used to stop the run at a refresh)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    pairs = Dataset.from_dict({"id": ["a", "b"], "prompt": ["3 1 >", "2 5 >"], "chosen": [" 1 3", " 2 5"],
                               "rejected": ["", " 5"]})
    report = refresh_reward_model(rm, pairs, args=_refresh_args(tmp_path, num_train_epochs=1), processing_class=tok)
    assert report.num_new_pairs == 2
    bad = Dataset.from_dict({"id": ["a"], "prompt": ["3 1 >"], "chosen": [" 1 3"], "rejected": [None]})
    with pytest.raises(ValueError, match="row 0 \\(id 'a'\\) has a None rejected answer"):
        refresh_reward_model(rm, bad, args=_refresh_args(tmp_path), processing_class=tok)
    same = Dataset.from_dict({"prompt": ["3 1 >"], "chosen": [" 1 3"], "rejected": [" 1 3"]})
    with pytest.raises(ValueError, match="identical chosen and rejected"):
        refresh_reward_model(rm, same, args=_refresh_args(tmp_path), processing_class=tok)
