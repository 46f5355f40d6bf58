"""The private TRL / transformers APIs we rely on still exist with the signatures we use (one place to fail)."""

import ast
import re
from pathlib import Path

import pytest

from trl_extras.utils.upstream import PRIVATE_UPSTREAM_APIS, TESTED_RANGES, UpstreamAPI, check_upstream_apis

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("api", PRIVATE_UPSTREAM_APIS, ids=lambda a: f"{a.module}:{a.qualname}")
def test_each_private_upstream_api_resolves_with_our_signature(api):
    assert check_upstream_apis([api]) == []


def test_a_renamed_or_resigned_api_is_reported():
    gone = UpstreamAPI("transformers", "Trainer._no_such_hook", "override", "nowhere", ())
    resigned = UpstreamAPI("transformers", "Trainer._save_checkpoint", "override", "nowhere", ("trial", "model"))
    problems = check_upstream_apis([gone, resigned])
    assert len(problems) == 2
    assert "is gone" in problems[0] and "_save_checkpoint now takes (model, trial)" in problems[1]


def _private_names_used_in_package() -> set[str]:
    """Private ``transformers.Trainer`` names that our Trainer subclasses override or call (``self._x`` /
    ``super()._x``). Classes that are not trainers (callbacks with an ``_evaluate`` of their own) are skipped."""
    import transformers

    trainer_private = {n for n in dir(transformers.Trainer) if n.startswith("_") and not n.startswith("__")}
    used = set()
    for path in (ROOT / "trl_extras").rglob("*.py"):
        for cls in ast.walk(ast.parse(path.read_text())):
            bases = [ast.unparse(b) for b in cls.bases] if isinstance(cls, ast.ClassDef) else []
            if not any(b.endswith("Trainer") for b in bases):
                continue
            for node in ast.walk(cls):
                if isinstance(node, ast.FunctionDef) and node.name in trainer_private:
                    used.add(node.name)
                if isinstance(node, ast.Attribute) and node.attr in trainer_private:
                    if isinstance(node.value, (ast.Name, ast.Call)):  # self._get_dataloader(...), super()._save(...)
                        used.add(node.attr)
    return used


def test_every_private_trainer_method_we_use_is_listed():
    """A new override of (or call to) a private ``transformers.Trainer`` method must be added to the list."""
    listed = {api.qualname.split(".")[-1] for api in PRIVATE_UPSTREAM_APIS}
    # attributes of our own that happen to share Trainer's private names are not upstream APIs we depend on
    ours = {"_signature_columns", "_tag_names", "_metrics", "_globalstep_last_logged"}
    missing = _private_names_used_in_package() - listed - ours
    assert not missing, f"private transformers.Trainer APIs used but not in utils/upstream.py: {sorted(missing)}"


def test_pyproject_declares_the_tested_ranges():
    text = (ROOT / "pyproject.toml").read_text()
    for package, spec in TESTED_RANGES.items():
        assert re.search(rf'"{package}{re.escape(spec)}"', text), f"pyproject.toml should require {package}{spec}"


def test_installed_versions_are_inside_the_tested_ranges():
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    for package, spec in TESTED_RANGES.items():
        assert version(package) in SpecifierSet(spec), f"{package} {version(package)} outside {spec}"
