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


def results_table(rows: dict[str, dict], *, part: str | None = None) -> str:
    """One row per method: top-1 overall/many/medium/few, plain and logit-adjusted (%), of the
    whole summary or of one part of the test set (`part="report"`), which then adds the overall
    accuracy with τ chosen on the validation part, and, when a row has one, the blend with the
    encoder's head ((w, τ) chosen on the validation part)."""
    tuned = part == "report"
    blended = tuned and any("blended" in summary for summary in rows.values())
    extra = (" | tuned (τ) |" if tuned else " |") + (" blended with the encoder's head (w, τ) |" if blended else "")
    header = "| method | " + " | ".join(GROUPS) + " | " + " | ".join(f"{g} (adj.)" for g in GROUPS) + extra
    lines = [header, "|" + "---|" * (1 + 2 * len(GROUPS) + tuned + blended)]
    for name, summary in rows.items():
        scores = summary if part is None else summary[part]
        plain = [fmt(scores["acc"][g]) for g in GROUPS]
        adjusted = [fmt(scores["acc_adjusted"][g]) for g in GROUPS]
        cells = plain + adjusted
        if tuned:
            cells.append(f"{fmt(summary['tuned']['report']['acc']['overall'])} ({summary['tuned']['tau']:g})")
        if blended:
            mix = summary.get("blended")
            cells.append("–" if mix is None else f"{fmt(mix['report']['acc']['overall'])} ({mix['weight']:g}, {mix['tau']:g})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, report: dict, markdown: str) -> None:
    """A benchmark's results: `out`.json and `out`.md, each written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), strict_json(report, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown)
