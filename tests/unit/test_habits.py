"""House habits checked mechanically: no issue numbers in code, the contract by its path."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = [
    p
    for top in ("src", "tests", "benchmarks", "scripts")
    for p in (REPO / top).rglob("*")
    if p.is_file() and p.suffix in {".py", ".js", ".sh", ""} and "__pycache__" not in p.parts
]


def test_sources_are_found() -> None:
    assert any(p.name == "engine.py" for p in SOURCES)


def test_no_issue_numbers_in_code_or_comments() -> None:
    # A reader cannot follow a tracker number: say what the thing is instead.
    pattern = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
    found = [f"{p.relative_to(REPO)}:{n}" for p in SOURCES for n, line in _lines(p) if pattern.search(line)]
    assert not found, found


def test_contract_is_referred_to_by_its_path_in_the_repository() -> None:
    pattern = re.compile(r"(?<!docs/)CONTRACT\.md section")
    found = [f"{p.relative_to(REPO)}:{n}" for p in SOURCES for n, line in _lines(p) if pattern.search(line)]
    assert not found, found


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    return list(enumerate(text.splitlines(), 1))


def test_the_public_surface_resolves() -> None:
    import sandbox_executor

    for name in sandbox_executor.__all__:
        assert getattr(sandbox_executor, name) is not None
