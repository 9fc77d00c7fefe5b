"""README documents every setting, exactly as the Settings model defines it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_settings_table_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "settings-table"), "--check"], check=False, timeout=60
    )
    assert proc.returncode == 0, "run scripts/settings-table --write and commit README.md"
