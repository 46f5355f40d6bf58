"""The package's layers (README "Architecture"): imports only point down the stack, lazy imports included.

core (pure tensor math) <- modeling (runs models) <- rewards / trainers / callbacks / evaluation / refresh
<- pipeline <- scripts (the CLI). ``utils`` and ``testbed`` sit beside them: ``utils`` imports no other layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trl_extras

ROOT = Path(trl_extras.__file__).parent

# top-level subpackage -> the subpackages it may import from (besides itself)
ALLOWED = {
    "core": set(),
    "utils": set(),
    "modeling": {"core", "utils"},
    "rewards": {"core", "modeling", "utils"},
    "trainers": {"core", "modeling", "rewards", "utils"},
    "callbacks": {"core", "modeling", "rewards", "evaluation", "refresh", "utils"},
    "evaluation": {"core", "modeling", "rewards", "utils"},
    "refresh": {"core", "modeling", "rewards", "trainers", "evaluation", "testbed", "utils"},
    "testbed": {"core", "modeling", "rewards", "utils"},
    "pipeline": {"core", "modeling", "rewards", "trainers", "callbacks", "evaluation", "refresh", "testbed", "utils"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every trl_extras module ``path`` imports (module level and inside functions)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("trl_extras"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("trl_extras"):
                found.add(name)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_imports_point_down_the_layers():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        layer = _layer(_module(path))
        if layer not in ALLOWED:  # scripts, cli.py and the package root may import anything
            continue
        for name in _imports(path):
            target = _layer(name)
            if target is not None and target != layer and target not in ALLOWED[layer]:
                violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not violations, "layering violations:\n" + "\n".join(violations)


# what running a model looks like: its outputs' fields, its forward, its loaders; and calling it by its usual names
_MODEL_ATTRS = {"generate", "from_pretrained", "get_decoder", "forward", "logits", "last_hidden_state", "hidden_states"}
_MODEL_NAMES = {"model", "policy", "ref_model", "reward_model", "value_model", "trunk"}


def test_core_runs_no_model():
    """core/ is tensor math only: no transformers/peft/trl/accelerate import, no model call."""
    for path in (ROOT / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    assert name.split(".")[0] not in {"transformers", "peft", "trl", "accelerate", "deepspeed"}, (
                        f"core/{path.name} imports {name}"
                    )
            if isinstance(node, ast.Attribute) and node.attr in _MODEL_ATTRS:
                raise AssertionError(f"core/{path.name} line {node.lineno} calls a model (.{node.attr})")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _MODEL_NAMES:
                raise AssertionError(f"core/{path.name} line {node.lineno} runs a model ({node.func.id}(...))")


def test_every_cli_command_lives_in_scripts():
    from trl_extras.cli import COMMANDS

    outside = {name: module for name, (module, _) in COMMANDS.items() if not module.startswith("trl_extras.scripts.")}
    assert not outside, f"subcommands outside trl_extras.scripts: {outside}"
    stray = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*cli*.py") if p.name != "cli.py" or p.parent != ROOT)
    assert not stray, f"CLI modules outside trl_extras/scripts: {stray}"
