"""README tables that stay true: each table README shows is a file a script wrote, embedded between markers.

    <!-- table: benchmarks/results/demo_table.md -->
    ...the file's text, verbatim...
    <!-- /table -->

``python -m trl_extras.utils.readme_tables`` checks that every marked block equals its file (exit 1 and the stale
blocks named otherwise); ``--write`` copies the files in. A test runs the check, so a README table can only change
by regenerating its file (``benchmarks/method_ranking.py`` writes the demo's).
"""

from __future__ import annotations

import re
from pathlib import Path

_BLOCK = re.compile(r"(<!-- table: (?P<source>\S+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def embedded_tables(text: str) -> list[tuple[str, str]]:
    """``[(source path, embedded text)]`` of every marked block of ``text``, in order."""
    return [(m["source"], m["body"]) for m in _BLOCK.finditer(text)]


def _file_text(root: Path, source: str) -> str:
    path = root / source
    if not path.is_file():
        raise FileNotFoundError(f"README embeds {source!r}, which does not exist under {root}")
    text = path.read_text()
    return text if text.endswith("\n") else text + "\n"


def stale_tables(text: str, root: str | Path) -> list[str]:
    """Sources whose embedded block differs from the file under ``root``."""
    root = Path(root)
    return [source for source, body in embedded_tables(text) if body != _file_text(root, source)]


def fill_tables(text: str, root: str | Path) -> str:
    """``text`` with every marked block replaced by its file's current text."""
    root = Path(root)
    return _BLOCK.sub(lambda m: m.group(1) + _file_text(root, m["source"]) + m.group(4), text)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check (or --write) README's embedded result tables.")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--write", action="store_true", help="Copy the files into README instead of checking.")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    root = readme.resolve().parent
    if args.write:
        readme.write_text(fill_tables(text, root))
        print(f"{readme}: {len(embedded_tables(text))} tables filled")
        return 0
    stale = stale_tables(text, root)
    for source in stale:
        print(f"{readme}: the table from {source} is stale; run `python -m trl_extras.utils.readme_tables --write`")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
