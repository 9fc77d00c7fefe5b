"""docs/CONTRACT.md is the repository's copy of the shared wire contract, kept in step."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "CONTRACT.md"


def test_repository_copy_matches_the_shared_contract() -> None:
    if not SHARED.is_file():
        pytest.skip("no shared contract beside this checkout (a clean CI clone)")
    assert (REPO / "docs" / "CONTRACT.md").read_text() == SHARED.read_text(), (
        "docs/CONTRACT.md differs from ../shared/CONTRACT.md: copy the shared file over"
    )


def test_repository_copy_has_the_sections_code_refers_to() -> None:
    text = (REPO / "docs" / "CONTRACT.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4."):
        assert heading in text
