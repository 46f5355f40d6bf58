"""``trl-extras iterate``: rounds of RL → comparisons with the baseline → labels → reward-model refresh.

The article's drill, as an outer loop that survives people who answer days later. Each round ``k`` (directories under
``output_dir``):

1. ``round_<k>/ppo/``: PPO from the previous round's policy (round 0: the SFT model) against the current reward model;
2. ``round_<k>/comparisons.jsonl``: the new policy's answers vs the baseline's (the SFT model, or the previous
   round's policy) on fresh prompts, in random order, with their origins (the key: never shown to labellers);
3. labels: with ``labeler: judge`` the judge labels at once (``round_<k>/labelled.jsonl``); with ``labeler: people``
   the command writes ``round_<k>/to_label.jsonl`` (or ``.csv``), prints what to do and stops; run the same command
   again once the ``label`` column is filled in (A / B / tie) and it continues from there. That file stays the source
   of truth until the round's refresh has succeeded (labels changed after a refused or failed refresh are used);
   ``labelled.jsonl`` then records the labels the refresh trained on;
4. ``round_<k>/reward_model/``: the reward model refreshed on the labelled pairs (+ replay) and its report.

Every finished step leaves a ``result.json`` and is skipped on the next run, so a crashed or stopped run resumes where
it was. The settings are fingerprinted in ``output_dir/settings.json``: re-running the same directory with different
settings is refused (naming the fields that changed) instead of silently mixing rounds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..utils.resume import RESUME_ALLOW_CHANGES_HELP
from .labeling import read_jsonl, write_jsonl

# the judge of a testbed run (spelled as before, so runs started earlier keep their settings fingerprint)
_TESTBED_JUDGE = "trl_extras.testbed:gold_reward_fn"
# settings that do not change what a run computes (excluded from the fingerprint)
_UNFINGERPRINTED = ("output_dir", "min_labeled_fraction", "use_cpu", "resume_allow_changes")


@dataclass
class IterateConfig:
    """Settings of ``trl-extras iterate`` (see the module docstring for the round layout)."""

    output_dir: str = field(default="outputs/iterate", metadata={"help": "Root directory of all rounds."})
    rounds: int = field(default=3, metadata={"help": "Rounds of RL → compare → label → refresh."})
    policy_model: str | None = field(
        default=None, metadata={"help": "SFT policy path; None on the testbed builds the tiny kit policy."}
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "Trained reward-model path to start from; None on the testbed trains a proxy on dirty pairs."},
    )
    prompt_dataset: str = field(
        default="testbed", metadata={"help": "Prompts (`prompt` column): 'testbed' or a datasets spec / data file."}
    )
    replay_dataset: str | None = field(
        default=None,
        metadata={"help": "The reward model's earlier pairs to replay (a datasets spec); the testbed uses its dirty pairs."},
    )
    labeler: str = field(default="judge", metadata={"help": "'judge' (labels at once) or 'people' (files to fill in)."})
    judge: str | None = field(
        default=None,
        metadata={"help": "labeler=judge: the testbed's 'gold' / 'heuristic', a reward-model path, or an import path "
                  "`module:name` of a pairwise judge (has `.judge`) or of a reward function (wrapped in RewardJudge). "
                  "Unset: the testbed's gold reward on the testbed; required with your own prompt_dataset."},
    )
    judge_flip_rate: float = field(default=0.0, metadata={"help": "Flip this share of a reward judge's labels (noise)."})
    export_format: str = field(default="jsonl", metadata={"help": "labeler=people: 'jsonl' or 'csv'."})
    min_labeled_fraction: float = field(
        default=1.0, metadata={"help": "labeler=people: continue once this share of the round's rows is labelled."}
    )
    baseline: str = field(default="sft", metadata={"help": "Compare with 'sft' or with the 'previous' round's policy."})
    num_pairs: int = field(default=64, metadata={"help": "Comparisons per round (one fresh prompt each)."})
    num_dirty_pairs: int = field(default=500, metadata={"help": "Testbed: dirty pairs of the initial proxy RM."})
    ppo_max_steps: int = field(default=16, metadata={"help": "PPO optimizer steps per round."})
    ppo_batch_size: int = field(default=32, metadata={"help": "PPO rollouts per step."})
    ppo_learning_rate: float = field(default=3e-4, metadata={"help": "PPO policy learning rate."})
    ppo_kl_coef: float = field(default=0.05, metadata={"help": "β of the exact per-token KL to the SFT model."})
    max_completion_length: int = field(default=24, metadata={"help": "Generated tokens at most."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (RL and comparisons)."})
    refresh_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of each refresh."})
    refresh_epochs: float = field(default=2.0, metadata={"help": "Epochs of each refresh over new + replayed pairs."})
    replay_ratio: float = field(default=1.0, metadata={"help": "Replayed earlier pairs per new pair."})
    rm_batch_size: int = field(default=32, metadata={"help": "Reward-model batch size (pairs)."})
    seed: int = field(default=0, metadata={"help": "Global seed."})
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even when CUDA is available."})
    resume_allow_changes: list[str] | None = field(default=None, metadata={"help": RESUME_ALLOW_CHANGES_HELP})

    def __post_init__(self):
        if self.judge is None and self.prompt_dataset == "testbed":
            self.judge = _TESTBED_JUDGE  # the testbed's default only on the testbed's prompts

        from ..utils.resume import normalize_allow_changes

        self.resume_allow_changes = normalize_allow_changes(self.resume_allow_changes)
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}.")
        if self.labeler not in ("judge", "people"):
            raise ValueError(f"labeler must be 'judge' or 'people', got {self.labeler!r}.")
        if self.baseline not in ("sft", "previous"):
            raise ValueError(f"baseline must be 'sft' or 'previous', got {self.baseline!r}.")
        if self.export_format not in ("jsonl", "csv"):
            raise ValueError(f"export_format must be 'jsonl' or 'csv', got {self.export_format!r}.")
        if not 0.0 < self.min_labeled_fraction <= 1.0:
            raise ValueError(f"min_labeled_fraction must be in (0, 1], got {self.min_labeled_fraction}.")
        if self.num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {self.num_pairs}.")


def settings_fingerprint(config) -> tuple[str, dict]:
    """``(hash, settings)`` of a dataclass's fields that change results (``trl_extras.utils.fingerprint``)."""
    from ..utils.fingerprint import fingerprint_hash
    from ..utils.fingerprint import settings_fingerprint as describe_settings

    settings = describe_settings(**{k: v for k, v in asdict(config).items() if k not in _UNFINGERPRINTED})
    return fingerprint_hash(settings), settings


def check_settings(config, root: Path) -> None:
    """Write ``settings.json`` on the first run; refuse a different fingerprint later, naming what changed, unless
    ``resume_allow_changes`` accepts it (``utils.fingerprint.check_fingerprint``, the check every resume uses)."""
    from ..utils.atomic import atomic_write_json, read_json
    from ..utils.fingerprint import check_fingerprint

    digest, settings = settings_fingerprint(config)
    path = root / "settings.json"
    if path.is_file():
        saved = read_json(path, "The iterate settings file")
        check_fingerprint(
            saved.get("settings"), settings, f"{root}",
            "Use the original settings to continue, or a new output_dir for a new run.",
            allow=config.resume_allow_changes,
        )
        if saved.get("fingerprint") == digest:
            return
    atomic_write_json(path, {"fingerprint": digest, "settings": settings})


STEP_KIND = "iterate_step"


def _done(path: Path) -> dict | None:
    """The result of a finished step: its ``result.json``, when the step's manifest (``utils.resume``, written last)
    verifies by sha256; None for a step that did not finish (it runs again)."""
    from ..utils.resume import verify

    file = path / "result.json"
    if not file.is_file():
        return None
    problem = verify(path, STEP_KIND)
    if problem is not None:
        import logging

        logging.getLogger(__name__).warning("Step %s is redone: %s", path, problem)
        return None
    return json.loads(file.read_text())


def _finish(path: Path, result: dict, manifest: bool = True) -> dict:
    from ..utils.atomic import atomic_write_text
    from ..utils.resume import write_manifest

    atomic_write_text(path / "result.json", json.dumps(result, indent=2, default=str))
    if manifest:
        write_manifest(path, STEP_KIND)  # last: the step is complete
    return result


class Iteration:
    """One ``trl-extras iterate`` run over its directory (each step skipped when its result exists)."""

    def __init__(self, config: IterateConfig):
        self.config = config
        self.root = Path(config.output_dir)
        self.testbed = config.prompt_dataset == "testbed"
        self.waiting: dict | None = None  # why the current round waits for people's labels (file, counts, reason)
        if not self.testbed and (config.policy_model is None or config.reward_model is None):
            raise ValueError("Outside the testbed, policy_model and reward_model are required.")
        if not self.testbed and config.labeler == "judge" and not config.judge:
            raise ValueError(
                f"judge is required with your own prompt_dataset {config.prompt_dataset!r} and labeler 'judge' (the "
                "testbed's gold judge stands in only on the testbed): a reward-model path, module:function, or "
                "'gold' / 'heuristic' to label with the testbed's rewards; or labeler 'people'."
            )

    # ------------------------------------------------------------------------------------------------ inputs
    def trainer_kwargs(self) -> dict:
        import torch

        cpu = self.config.use_cpu or not torch.cuda.is_available()
        return dict(use_cpu=cpu, bf16=not cpu, report_to="none", save_strategy="no", gradient_checkpointing=False,
                    disable_tqdm=True, logging_steps=10, seed=self.config.seed)

    def sft_path(self) -> str:
        if self.config.policy_model:
            return self.config.policy_model
        from ..testbed import build_sft_policy

        return build_sft_policy(progress=False)

    def prompts(self) -> tuple[list, list]:
        """(RL prompts, comparison prompts): the last ``rounds × num_pairs`` prompts are kept for comparisons."""
        if self.testbed:
            from ..testbed import prompt_dataset

            prompts = list(prompt_dataset("train")["prompt"])
        else:
            from ..evaluation._common import prompts_from
            from ..utils.data import load_dataset_from_spec

            prompts = prompts_from(load_dataset_from_spec(self.config.prompt_dataset), what="prompt_dataset")
        need = self.config.rounds * self.config.num_pairs
        if len(prompts) < need + 1:
            raise ValueError(
                f"{self.config.rounds} rounds of {self.config.num_pairs} comparisons need {need} fresh prompts plus RL "
                f"prompts; the prompt dataset has {len(prompts)}: no prompts left for every round."
            )
        return prompts[:-need], prompts[-need:]

    def replay_pairs(self):
        if self.config.replay_dataset:
            from ..utils.data import load_dataset_from_spec

            return load_dataset_from_spec(self.config.replay_dataset)
        if self.testbed:
            from ..testbed import dirty_pairs

            return dirty_pairs(self.config.num_dirty_pairs, seed=1000 + self.config.seed)
        return None

    def judge(self):
        from ..testbed.names import TESTBED_REWARDS, testbed_rewards
        from ..utils.imports import resolve_reward_spec
        from .labeling import RewardJudge

        spec = self.config.judge
        named = testbed_rewards() if spec in TESTBED_REWARDS else None
        obj = resolve_reward_spec(spec, named, "judge")  # the CLI's vocabulary: testbed names, module:fn, paths
        if isinstance(obj, str):  # a reward-model path (folder or Hub id)
            return RewardJudge(obj, flip_rate=self.config.judge_flip_rate, seed=self.config.seed)
        if callable(getattr(obj, "judge", None)):
            return obj
        return RewardJudge(obj, flip_rate=self.config.judge_flip_rate, seed=self.config.seed)

    # ------------------------------------------------------------------------------------------------ steps
    def initial_reward_model(self) -> str:
        if self.config.reward_model:
            return self.config.reward_model
        out = self.root / "init_rm"
        done = _done(out)
        if done:
            return done["model"]
        from trl import RewardConfig, RewardTrainer

        sft = self.sft_path()
        pairs = self.replay_pairs().select_columns(["prompt", "chosen", "rejected"])
        args = RewardConfig(output_dir=str(out / "run"), num_train_epochs=1, learning_rate=self.config.refresh_learning_rate,
                            per_device_train_batch_size=self.config.rm_batch_size, max_length=128,
                            **self.trainer_kwargs())
        trainer = RewardTrainer(model=sft, args=args, train_dataset=pairs)
        trainer.train()
        trainer.save_model(str(out / "model"))
        return _finish(out, {"model": str(out / "model"), "num_pairs": len(pairs)})["model"]

    def ppo(self, k: int, policy: str, reward_model: str, rl_prompts: list) -> str:
        out = self.root / f"round_{k}" / "ppo"
        done = _done(out)
        if done:
            return done["model"]
        from datasets import Dataset

        from ..modeling.peft import save_model
        from ..trainers.ppo import PPOConfig, PPOTrainer

        c = self.config
        args = PPOConfig(
            output_dir=str(out / "run"), max_steps=c.ppo_max_steps, per_device_train_batch_size=c.ppo_batch_size,
            learning_rate=c.ppo_learning_rate, max_completion_length=c.max_completion_length,
            temperature=c.temperature, kl_estimator="exact", kl_coef=c.ppo_kl_coef, advantage_normalization="batch",
            num_ppo_epochs=2, num_mini_batches=1, **self.trainer_kwargs(),
        )
        trainer = PPOTrainer(model=policy, reward_funcs=reward_model, ref_model=self.sft_path(), args=args,
                             train_dataset=Dataset.from_dict({"prompt": rl_prompts}))
        trainer.train()
        path = save_model(trainer.policy, trainer.processing_class, out / "model")
        logs = [{key: v for key, v in e.items() if isinstance(v, (int, float))} for e in trainer.state.log_history]
        return _finish(out, {"model": path, "log_history": logs})["model"]

    def comparisons(self, k: int, policy: str, baseline: str, prompts: list):
        from .comparisons import collect_comparisons

        path = self.root / f"round_{k}" / "comparisons.jsonl"
        if path.is_file():
            return read_jsonl(path)
        c = self.config
        ds = collect_comparisons(policy, baseline, prompts, max_new_tokens=c.max_completion_length,
                                 temperature=c.temperature, seed=c.seed + 1000 * k, id_prefix=f"r{k}-")
        write_jsonl(path, ds)
        return ds

    def labels(self, k: int, comparisons):
        """Labelled comparisons, or None when people have not labelled enough yet (after writing the file; the
        reason is in ``self.waiting``).

        With people, the file they edit (``to_label.*``) is the source of truth until this round's refresh has
        succeeded: it is read again on every run, so labels changed or added after a failed or interrupted refresh
        (every row a tie, ``min_labeled_fraction`` reached and more rows labelled since) are used. ``labelled.jsonl``
        is written just before the refresh and read back only once the refresh's ``result.json`` exists: it is then
        the record of the labels that refresh trained on.
        """
        from .labeling import export_for_labeling, import_labels, label_comparisons, label_counts

        folder = self.root / f"round_{k}"
        labelled_path = folder / "labelled.jsonl"
        if self.config.labeler == "judge":
            if labelled_path.is_file():  # a judge's labels are kept: never ask (or pay) the judge twice
                return read_jsonl(labelled_path)
            labelled = label_comparisons(comparisons, self.judge())
            write_jsonl(labelled_path, labelled)
            return labelled
        if labelled_path.is_file() and _done(folder / "reward_model"):
            return read_jsonl(labelled_path)
        to_label = folder / f"to_label.{self.config.export_format}"
        if not to_label.is_file():
            # a labelled.jsonl without its file (deleted by hand): export its labels, so none is lost
            export_for_labeling(read_jsonl(labelled_path) if labelled_path.is_file() else comparisons, to_label)
        labelled = import_labels(to_label, comparisons=comparisons)
        counts = label_counts(labelled)
        self.waiting = {"file": to_label, "labelled": counts["labelled"], "total": len(labelled), "counts": counts}
        if counts["labelled"] < self.config.min_labeled_fraction * len(labelled) or counts["labelled"] == 0:
            self.waiting["reason"] = "not_enough_labels"
            return None
        if counts["a"] + counts["b"] == 0:  # only ties: Bradley-Terry has no pair to learn from
            self.waiting["reason"] = "only_ties"
            return None
        self.waiting = None
        write_jsonl(labelled_path, labelled)
        return labelled

    def refresh(self, k: int, reward_model: str, labelled, replay) -> str:
        out = self.root / f"round_{k}" / "reward_model"
        done = _done(out)
        if done:
            return done["model"]
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .labeling import label_counts, policy_win_rate, to_preference_pairs
        from .refresh import RewardRefreshConfig, refresh_reward_model

        c = self.config
        tok = AutoTokenizer.from_pretrained(reward_model)
        model = AutoModelForSequenceClassification.from_pretrained(reward_model, num_labels=1)
        args = RewardRefreshConfig(output_dir=str(out / "run"), learning_rate=c.refresh_learning_rate,
                                   num_train_epochs=c.refresh_epochs, per_device_train_batch_size=c.rm_batch_size,
                                   max_length=128, replay_ratio=c.replay_ratio, **self.trainer_kwargs())
        report = refresh_reward_model(model, to_preference_pairs(labelled), replay_pairs=replay, args=args,
                                      processing_class=tok)
        model.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
        return _finish(out, {"model": str(out / "model"), "report": report.to_dict(), "labels": label_counts(labelled),
                             "policy_win_rate": policy_win_rate(labelled)})["model"]

    # ------------------------------------------------------------------------------------------------ the loop
    def run(self) -> dict:
        from ..utils.resume import OutputDirLock, check_writable

        check_writable(self.root)  # before any work
        with OutputDirLock(self.root, "iterate run"):  # a second run on this directory is refused while this one runs
            return self._run()

    def _run(self) -> dict:
        from datasets import concatenate_datasets

        from .labeling import to_preference_pairs

        check_settings(self.config, self.root)
        c = self.config
        rl_prompts, fresh = self.prompts()
        sft = self.sft_path()
        reward_model = self.initial_reward_model()
        base_replay = self.replay_pairs()
        replay_parts = [] if base_replay is None else [base_replay.select_columns(["prompt", "chosen", "rejected"])]
        policy = sft
        rounds = []
        for k in range(c.rounds):
            previous = policy
            policy = self.ppo(k, policy, reward_model, rl_prompts)
            baseline = sft if c.baseline == "sft" else previous
            comparisons = self.comparisons(k, policy, baseline, fresh[k * c.num_pairs : (k + 1) * c.num_pairs])
            self.waiting = None
            labelled = self.labels(k, comparisons)
            if labelled is None:
                return self._report_waiting(k)
            if c.labeler == "judge" and not len(to_preference_pairs(labelled)):
                raise ValueError(
                    f"Round {k}: the judge {c.judge!r} labelled all {len(labelled)} comparisons as ties: no preference "
                    "pair to refresh the reward model on. Use another judge (or one with a smaller tie threshold), "
                    f"delete {self.root / f'round_{k}' / 'labelled.jsonl'} so that the next run labels again, and run "
                    "the same command again."
                )
            replay = concatenate_datasets(replay_parts) if replay_parts else None
            reward_model = self.refresh(k, reward_model, labelled, replay)
            pairs = to_preference_pairs(labelled)
            if len(pairs):
                replay_parts.append(pairs.select_columns(["prompt", "chosen", "rejected"]))
            rounds.append({"round": k, "policy": policy, "reward_model": reward_model,
                           **(_done(self.root / f"round_{k}" / "reward_model") or {})})
        summary = {"status": "done", "rounds": rounds, "policy": policy, "reward_model": reward_model}
        _finish(self.root, summary, manifest=False)  # the summary: read by people, never to skip work
        print(f"\nDone: {c.rounds} rounds. Final policy {policy}; final reward model {reward_model}.", flush=True)
        return summary

    def _report_waiting(self, k: int) -> dict:
        """Print what the person has to do next; the run's result while labels are missing."""
        w, c = self.waiting, self.config
        path, have, total, counts = w["file"], w["labelled"], w["total"], w["counts"]
        if w["reason"] == "only_ties":
            print(
                f"\nRound {k}: all {have} labelled comparisons in {path} are ties ({counts['unlabelled']} unlabelled), "
                "and a reward-model refresh needs at least one comparison where one answer is better.\n"
                "Change the label of the rows where one answer is better to A or B (ties may stay), or label more "
                "rows. Keep the ids. Then run the same command again to continue.",
                flush=True,
            )
        else:
            print(
                f"\nRound {k}: {total} comparisons wait for labels in {path} ({have} labelled so far).\n"
                "Fill in the `label` column of each row: A (answer A is better), B, or tie; leave it empty if "
                "unsure (needed: "
                f"{c.min_labeled_fraction:.0%} of the rows). Keep the ids. Then run the same command again to "
                "continue.",
                flush=True,
            )
        print(f"{path} is read again on every run until round {k}'s reward model has been refreshed.", flush=True)
        return {"status": "waiting_for_labels", "reason": w["reason"], "round": k, "file": str(path),
                "labelled": have, "total": total}


def run_iterate(config: IterateConfig) -> dict:
    """Run (or continue) the rounds; returns ``{"status": "done" | "waiting_for_labels", ...}``."""
    return Iteration(config).run()
