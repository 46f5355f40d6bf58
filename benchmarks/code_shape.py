"""The shape of the package's code at a git revision: the numbers issue 24 asks for before and after its refactor.

- the longest functions (top N, with their line counts),
- the trainer files' sizes (lines),
- the attributes a class first assigns outside ``__init__`` (``self.x = ...`` in a method, never in ``__init__``):
  state that flows between methods without being declared,
- the ``duplicates`` tool's pair count on the package (when the tool is on PATH).

Usage::

    python benchmarks/code_shape.py --rev 7188464 --rev HEAD --out benchmarks/results/code_shape.json

Each revision is read with ``git show`` (no checkout), so the numbers of an old revision need nothing but git.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "trl_extras"


def _files(rev: str) -> dict[str, str]:
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, PACKAGE], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    return {
        n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        for n in names
        if n.endswith(".py")
    }


def longest_functions(sources: dict[str, str], top: int) -> list[dict]:
    """``top`` longest function/method definitions: ``{"name": "path::Class.func", "lines": n}``."""
    rows = []
    for path, text in sources.items():
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        item._qual = f"{node.name}.{item.name}"  # noqa: SLF001 (a tag for the second walk)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = getattr(node, "_qual", node.name)
                rows.append({"name": f"{path}::{qual}", "lines": node.end_lineno - node.lineno + 1})
    return sorted(rows, key=lambda r: -r["lines"])[:top]


def attributes_outside_init(sources: dict[str, str]) -> dict[str, list[str]]:
    """Per class: the ``self.<attr>`` names assigned in some method but never in ``__init__`` nor declared in the class
    body (a dataclass field set in ``__post_init__`` is declared). Attributes an upstream base class declares (e.g.
    ``Trainer.model``) are counted when reassigned in a method: the private (``_x``) count is the cleaner signal."""
    out = {}
    for path, text in sources.items():
        for cls in (n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ClassDef)):
            in_init, elsewhere = set(), set()
            # fields declared in the class body (dataclass fields, annotations) are declared state
            in_init |= {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
            for fn in (n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
                target = in_init if fn.name == "__init__" else elsewhere
                for node in ast.walk(fn):
                    targets = node.targets if isinstance(node, ast.Assign) else (
                        [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
                    )
                    flat = []
                    while targets:  # `self.a, self.b = ...` assigns both
                        t = targets.pop()
                        targets.extend(t.elts) if isinstance(t, (ast.Tuple, ast.List)) else flat.append(t)
                    for t in flat:
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                            target.add(t.attr)
            missing = sorted(elsewhere - in_init)
            if missing:
                out[f"{path}::{cls.name}"] = missing
    return out


def duplicate_pairs(sources: dict[str, str]) -> int | None:
    """Pairs the ``duplicates`` tool reports on the package alone (None when the tool is not installed)."""
    if shutil.which("duplicates") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for path, text in sources.items():
            (Path(tmp) / path).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / path).write_text(text)
        head = subprocess.run(
            ["duplicates", "--repo", tmp, "--most", "1", "--seconds", "120"], capture_output=True, text=True
        ).stdout.splitlines()
    return int(head[0].split()[0]) if head and head[0].split()[0].isdigit() else None


def shape(rev: str, top: int) -> dict:
    sources = _files(rev)
    trainers = {p: len(t.splitlines()) for p, t in sources.items() if p.startswith(f"{PACKAGE}/trainers/")}
    outside = attributes_outside_init(sources)
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    return {
        "rev": rev,
        "commit": commit,
        "package_lines": sum(len(t.splitlines()) for t in sources.values()),
        "longest_functions": longest_functions(sources, top),
        "trainer_file_lines": dict(sorted(trainers.items(), key=lambda kv: -kv[1])),
        "attributes_outside_init": outside,
        "attributes_outside_init_count": sum(len(v) for v in outside.values()),
        "private_attributes_outside_init_count": sum(
            sum(a.startswith("_") for a in v) for v in outside.values()
        ),
        "trainer_attributes_outside_init_count": sum(
            len(v) for k, v in outside.items() if k.startswith(f"{PACKAGE}/trainers/")
        ),
        "duplicate_pairs": duplicate_pairs(sources),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", default=None, help="git revision (repeatable; default HEAD)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    result = [shape(rev, args.top) for rev in (args.rev or ["HEAD"])]
    for r in result:
        print(f"== {r['rev']} ({r['commit']}): {r['package_lines']} package lines, "
              f"{r['attributes_outside_init_count']} attributes first set outside __init__ "
              f"({r['private_attributes_outside_init_count']} private, {r['trainer_attributes_outside_init_count']} in trainers), duplicates pairs {r['duplicate_pairs']}")
        for f in r["longest_functions"]:
            print(f"   {f['lines']:4d}  {f['name']}")
        for p, n in r["trainer_file_lines"].items():
            print(f"   file {n:5d}  {p}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
