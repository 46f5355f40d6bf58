"""Saving and loading a ``RewardEnsemble`` (``ensemble_manifest.json`` + members), and the manifest constants."""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST_NAME = "ensemble_manifest.json"
MEMBER_MARKER = "member_complete.json"  # written after a member is saved (train_reward_ensemble reuses it)
MANIFEST_FORMAT = "trl_extras.reward_ensemble"


def ensemble_manifest(ensemble, members: list[str], base_model: str | None) -> dict:
    """The manifest dict of ``ensemble`` whose members are saved at ``members`` (paths relative to its directory)."""
    return {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "layout": ensemble.layout,
        "members": members,
        "adapter_names": list(ensemble.adapter_names),
        "base_model": base_model,
        "pad_token_id": ensemble.config.get_text_config().pad_token_id,
        "tail_start": ensemble.tail_start,
        "calibration": ensemble.calibration,
        "penalty": ensemble.penalty,
        "coef": ensemble.coef,
        **{
            k: v
            for k, v in ensemble.metadata.items()
            if k not in ("format", "version", "layout", "members", "directory", "base_model")
        },
    }


def save_ensemble(ensemble, directory: str | os.PathLike, base_model_path: str | None = None) -> str:
    """Write the members (separate checkpoints, or the K adapters plus the tokenizer), the calibration and a
    ``ensemble_manifest.json``. A LoRA ensemble references its base by path (``base_model_path`` or the
    base's ``config._name_or_path``, which must exist on disk)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if ensemble.layout == "separate":
        members = []
        for i, model in enumerate(ensemble.models):
            model.save_pretrained(directory / f"member_{i}")
            ensemble.processing_class.save_pretrained(directory / f"member_{i}")
            members.append(f"member_{i}")
        base = None
    else:
        base = base_model_path or ensemble.metadata.get("base_model") or ensemble.config._name_or_path
        if not base or not Path(base).exists():
            raise ValueError(
                f"The LoRA ensemble's base model {base!r} is not on disk; save it and pass `base_model_path`."
            )
        base = str(Path(base).resolve())
        members = []
        for name in ensemble.adapter_names:
            # PEFT writes a non-default adapter into <dir>/<name>/.
            ensemble.peft_model.save_pretrained(directory / "adapters", selected_adapters=[name])
            members.append(f"adapters/{name}")
        ensemble.processing_class.save_pretrained(directory / "tokenizer")
    manifest = ensemble_manifest(ensemble, members, base)
    from ...utils.atomic import atomic_write_json, fsync_tree

    fsync_tree(directory)
    atomic_write_json(directory / MANIFEST_NAME, manifest)  # last: a directory with a manifest is complete
    return str(directory)


def read_manifest(directory: str | os.PathLike) -> dict:
    """The ``ensemble_manifest.json`` of ``directory``; a clear error when there is none (not an ensemble, or one
    whose training or calibration was interrupted) or it is not valid JSON."""
    from ...utils.atomic import read_json

    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"No {MANIFEST_NAME} in {directory}: not a saved RewardEnsemble (an ensemble whose training or "
            "calibration was interrupted has none: rerun it, finished members are reused)."
        )
    return read_json(path, what="Reward-ensemble manifest")


def check_member_path(directory: Path, rel, manifest_path) -> None:
    """Raise unless the manifest's member path ``rel`` is relative and stays inside ``directory``: a manifest
    (downloaded, hand-edited) must not load models from elsewhere on the machine."""
    text = str(rel)
    resolved = (Path(directory) / text).resolve()
    if (not isinstance(rel, str) or not text or os.path.isabs(text) or ".." in Path(text).parts
            or not resolved.is_relative_to(Path(directory).resolve())):  # fmt: skip
        raise ValueError(
            f"{manifest_path}: member path {rel!r} is not a relative path inside the ensemble directory; refusing to "
            "load members from outside it."
        )


def ensemble_from_manifest(cls, directory, manifest, penalty, coef, batch_size, model_init_kwargs, device,
                           allow_uncalibrated=False):  # fmt: skip
    """A ``cls`` (``RewardEnsemble``) from a manifest dict read from ``directory``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a RewardEnsemble manifest (format={manifest.get('format')!r}).")
    for rel in manifest.get("members") or []:
        check_member_path(directory, rel, path)
    penalty = penalty or manifest.get("penalty", "variance")
    coef = manifest.get("coef", 0.1) if coef is None else coef
    kwargs = dict(model_init_kwargs or {})
    if manifest["layout"] == "separate":
        models = []
        for rel in manifest["members"]:
            m = AutoModelForSequenceClassification.from_pretrained(directory / rel, num_labels=1, **kwargs)
            models.append(m.to(device) if device is not None else m)
        members = models
        processing_class = [AutoTokenizer.from_pretrained(directory / rel) for rel in manifest["members"]]
    elif manifest["layout"] == "lora":
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(manifest["base_model"], num_labels=1, **kwargs)
        if manifest.get("pad_token_id") is not None:
            base.config.get_text_config().pad_token_id = manifest["pad_token_id"]
        names = manifest["adapter_names"] or [Path(rel).name for rel in manifest["members"]]
        peft_model = PeftModel.from_pretrained(base, directory / manifest["members"][0], adapter_name=names[0])
        for name, rel in zip(names[1:], manifest["members"][1:]):
            peft_model.load_adapter(directory / rel, adapter_name=name)
        if device is not None:
            peft_model.to(device)
        members, processing_class = peft_model, AutoTokenizer.from_pretrained(directory / "tokenizer")
    else:
        raise ValueError(f"Unknown ensemble layout {manifest['layout']!r} in {path}.")
    ensemble = cls(
        members,
        processing_class,
        penalty=penalty,
        coef=coef,
        batch_size=batch_size,
        calibration=manifest.get("calibration"),
        allow_uncalibrated=allow_uncalibrated,
    )
    ensemble.metadata = {
        k: v
        for k, v in manifest.items()
        if k not in ("calibration", "penalty", "coef", "adapter_names", "pad_token_id", "tail_start", "members")
    }
    ensemble.metadata["directory"] = str(directory)
    return ensemble


def interrupted_ensemble_dir(path: str | os.PathLike) -> bool:
    """True for a directory with ensemble members but no manifest (training or calibration was interrupted)."""
    path = Path(path)
    if not path.is_dir() or (path / MANIFEST_NAME).exists():
        return False
    return any(path.glob(f"member_*/{MEMBER_MARKER}")) or any(path.glob(f"adapters/member_*/{MEMBER_MARKER}"))
