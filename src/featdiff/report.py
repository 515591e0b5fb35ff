"""Results tables in markdown, shared by the CLI and the benchmarks, and the benchmarks' writer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from featdiff.io import atomic_write_text, strict_json

GROUPS = ("overall", "many", "medium", "few")


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_mean_std(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    mean = sum(present) / len(present)
    if len(present) == 1:
        return f"{mean:.2f}"
    std = (sum((v - mean) ** 2 for v in present) / (len(present) - 1)) ** 0.5
    return f"{mean:.2f} ± {std:.2f}"


def results_table(rows: dict[str, dict]) -> str:
    """One row per method: top-1 overall/many/medium/few, plain and logit-adjusted (%)."""
    header = "| method | " + " | ".join(GROUPS) + " | " + " | ".join(f"{g} (adj.)" for g in GROUPS) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(GROUPS))]
    for name, summary in rows.items():
        plain = [fmt(summary["acc"][g]) for g in GROUPS]
        adjusted = [fmt(summary["acc_adjusted"][g]) for g in GROUPS]
        lines.append(f"| {name} | " + " | ".join(plain + adjusted) + " |")
    return "\n".join(lines)


def write_report(out: Path, report: dict, markdown: str) -> None:
    """A benchmark's results: `out`.json and `out`.md, each written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), strict_json(report, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown)
