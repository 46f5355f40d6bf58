"""`trl-extras iterate`: judge runs to the end; people get a file, the same command continues; settings fingerprint."""

import json

import pytest

from trl_extras.refresh.iterate import IterateConfig, run_iterate, settings_fingerprint

TINY = ["--rounds", "2", "--num_pairs", "6", "--num_dirty_pairs", "32", "--ppo_max_steps", "2", "--ppo_batch_size",
        "8", "--max_completion_length", "12", "--rm_batch_size", "8", "--refresh_epochs", "1", "--use_cpu", "true"]


def _cli(tmp_path, *extra):
    from trl_extras.cli import main

    return main(["iterate", "--output_dir", str(tmp_path / "it"), *TINY, *extra])


@pytest.mark.slow
def test_iterate_with_a_judge_runs_to_the_end(tmp_path, sft_policy_path):
    assert _cli(tmp_path, "--judge_flip_rate", "0.1") == 0
    root = tmp_path / "it"
    summary = json.loads((root / "result.json").read_text())
    assert summary["status"] == "done" and len(summary["rounds"]) == 2
    for k in range(2):
        assert (root / f"round_{k}" / "ppo" / "model" / "config.json").is_file()
        assert (root / f"round_{k}" / "labelled.jsonl").is_file()
        report = json.loads((root / f"round_{k}" / "reward_model" / "result.json").read_text())
        assert report["report"]["num_new_pairs"] >= 1 and "accuracy_after" in report["report"]
    # the round-1 PPO trained against the round-0 refreshed reward model (and so on): the chain is recorded
    assert summary["rounds"][1]["reward_model"].endswith("round_1/reward_model/model")
    # a second run finds everything done and changes nothing
    before = (root / "round_1" / "labelled.jsonl").read_text()
    assert _cli(tmp_path, "--judge_flip_rate", "0.1") == 0
    assert (root / "round_1" / "labelled.jsonl").read_text() == before


@pytest.mark.slow
def test_iterate_with_people_stops_and_continues_once_labels_are_filled(tmp_path, sft_policy_path, capsys):
    root = tmp_path / "it"
    assert _cli(tmp_path, "--labeler", "people") == 0
    out = capsys.readouterr().out
    to_label = root / "round_0" / "to_label.jsonl"
    assert to_label.is_file() and str(to_label) in out and "run the same command again" in out
    assert not (root / "round_0" / "reward_model").exists()
    rows = [json.loads(line) for line in to_label.read_text().splitlines()]
    assert all(r["label"] == "" for r in rows) and "origin_a" not in rows[0]

    # nothing filled in yet: the same command stops again, without redoing the RL stage
    mtime = (root / "round_0" / "ppo" / "result.json").stat().st_mtime
    assert _cli(tmp_path, "--labeler", "people") == 0
    assert "0 labelled so far" in capsys.readouterr().out
    assert (root / "round_0" / "ppo" / "result.json").stat().st_mtime == mtime

    # a person fills the label column (text edit), then the same command continues to round 1
    to_label.write_text("".join(json.dumps(dict(r, label=["A", "b", "tie"][i % 3])) + "\n" for i, r in enumerate(rows)))
    assert _cli(tmp_path, "--labeler", "people") == 0
    refreshed = json.loads((root / "round_0" / "reward_model" / "result.json").read_text())
    assert refreshed["labels"]["ties"] == len(rows) // 3 and refreshed["labels"]["unlabelled"] == 0
    assert (root / "round_1" / "to_label.jsonl").is_file()
    labelled = [json.loads(x) for x in (root / "round_0" / "labelled.jsonl").read_text().splitlines()]
    assert {"origin_a", "origin_b"} <= set(labelled[0])  # the key is kept next to the labels

    # different settings in the same directory are refused, naming the field
    with pytest.raises(ValueError, match=r"num_pairs: \d+ -> 7"):
        from trl_extras.cli import main

        main(["iterate", "--output_dir", str(root), *TINY[:2], "--num_pairs", "7", *TINY[4:], "--labeler", "people"])


def test_iterate_config_and_fingerprint_errors(tmp_path):
    with pytest.raises(ValueError, match="labeler must be 'judge' or 'people'"):
        IterateConfig(labeler="crowd")
    with pytest.raises(ValueError, match="baseline must be"):
        IterateConfig(baseline="base")
    a, _ = settings_fingerprint(IterateConfig(output_dir="x"))
    b, _ = settings_fingerprint(IterateConfig(output_dir="y"))
    c, _ = settings_fingerprint(IterateConfig(num_pairs=3))
    assert a == b != c
    with pytest.raises(ValueError, match="no prompts left"):
        run_iterate(IterateConfig(output_dir=str(tmp_path / "big"), rounds=2, num_pairs=1500))


def test_the_testbed_recipe_parses():
    from trl_extras.scripts.utils import parse_args

    (config,) = parse_args([IterateConfig], ["--config", "recipes/iterate_testbed.yaml"], "iterate")
    assert config.labeler == "judge" and config.rounds == 3 and config.judge_flip_rate == 0.1
