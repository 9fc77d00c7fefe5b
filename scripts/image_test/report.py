"""Check outcomes, measurements and the per-setting table of the image test."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The table's columns: each check may name the one it counts towards.
COLUMNS: tuple[str, ...] = (
    "starts",
    "level",
    "python",
    "javascript",
    "shell",
    "token",
    "port",
    "writes",
    "kill",
    "setsid",
    "forkbomb",
)


@dataclass
class SettingRecord:
    """What one container setting gave: its level, its columns, its time."""

    name: str
    expected_level: str
    level: str = "-"
    columns: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0


def _cell(ok: bool | None) -> str:
    return "-" if ok is None else "ok" if ok else "FAIL"


class Report:
    """One line per check on stdout; the table and the summary at the end."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.numbers: dict[str, Any] = {}
        self.settings: dict[str, SettingRecord] = {}

    def setting(self, name: str, expected_level: str) -> SettingRecord:
        record = SettingRecord(name, expected_level)
        self.settings[name] = record
        return record

    def check(self, where: str, name: str, ok: bool, detail: str = "", column: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        record = self.settings.get(where)
        if record is not None and column:
            record.columns[column] = record.columns.get(column, True) and ok
        line = f"[{'ok  ' if ok else 'FAIL'}] {where}: {name}"
        print(line + (f": {detail}" if detail else ""), flush=True)
        return ok

    def measure(self, name: str, value: Any, unit: str = "") -> None:
        self.numbers[name] = value
        print(f"[info] {name}: {value}{unit}", flush=True)

    def table(self) -> str:
        """Settings x columns: ok, FAIL, or - (not reached)."""
        head = ["setting", "expected", "level", *COLUMNS, "seconds"]
        rows = [head]
        for record in self.settings.values():
            cells = [_cell(record.columns.get(c)) for c in COLUMNS]
            rows.append([record.name, record.expected_level, record.level, *cells, f"{record.seconds:.0f}"])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        return "\n".join(
            " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        )

    def finish(self, out: Path) -> int:
        out.parent.mkdir(exist_ok=True)
        summary = {
            **self.numbers,
            "settings": {
                name: {
                    "level": r.level,
                    "expected": r.expected_level,
                    "columns": r.columns,
                    "seconds": r.seconds,
                }
                for name, r in self.settings.items()
            },
            "passed": self.passed,
            "failed": self.failed,
        }
        out.write_text(json.dumps(summary, indent=2) + "\n")
        print("\n" + self.table(), flush=True)
        print(f"image-test: {self.passed} passed, {self.failed} failed", flush=True)
        return 1 if self.failed else 0
