"""Result rows -> a rich table for the terminal, and CSV, JSON and Markdown files.

Rows are the dicts returned by :func:`s3od.evaluation.evaluate_folder` and
:func:`s3od.evaluation.benchmark_model` (one per model x set). When several models are scored on
the same set, the best value of each column within that set is shown in bold.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3od.evaluation.metrics import METRIC_KEYS, METRICS, SPECS

#: Columns shown on the terminal and in Markdown (HCE is added when a row has it).
TABLE_COLUMNS: tuple[str, ...] = ("MAE", "maxF", "meanF", "wF", "Sm", "meanEm", "maxEm", "IoU",
                                  "BIoU")
REPORT_SUFFIXES: tuple[str, ...] = (".csv", ".json", ".md")

Row = dict[str, Any]


def format_value(key: str, value: float | None) -> str:
    """How a metric is printed: 3 decimals, HCE as a whole number, ``-`` when missing."""
    if value is None:
        return "-"
    return f"{value:.0f}" if key == "HCE" else f"{value:.3f}"


def table_columns(rows: Sequence[Row]) -> list[str]:
    cols = list(TABLE_COLUMNS)
    if any(r["metrics"].get("HCE") is not None for r in rows):
        cols.append("HCE")
    return cols


def best_cells(rows: Sequence[Row], keys: Sequence[str] = METRIC_KEYS) -> set[tuple[int, str]]:
    """``(row index, key)`` of the best value per set and column, where a set has 2+ rows."""
    by_set: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_set.setdefault(row["set"], []).append(i)
    best: set[tuple[int, str]] = set()
    for indices in by_set.values():
        for key in keys:
            scored = [(i, rows[i]["metrics"].get(key)) for i in indices]
            scored = [(i, v) for i, v in scored if v is not None]
            if len(scored) < 2:
                continue
            pick = max if SPECS[key].higher_is_better else min
            target = pick(v for _, v in scored)
            best.update((i, key) for i, v in scored if v == target)
    return best


def _count(row: Row) -> str:
    return str(row["count"]) if row["count"] == row["total"] else f"{row['count']}/{row['total']}"


def sort_by_set(rows: Sequence[Row]) -> list[Row]:
    """Rows grouped by set (sets in order of first appearance), models in their given order."""
    order: dict[str, int] = {}
    for row in rows:
        order.setdefault(row["set"], len(order))
    return sorted(rows, key=lambda r: order[r["set"]])


def results_table(rows: Sequence[Row], title: str | None = None) -> Any:
    """A ``rich.table.Table`` of the rows, best value per set and column in bold.

    To stay narrow, the first column names the set when there is one model (named in the
    title), the model when there is one set, and otherwise a bold set line heads its models.
    """
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = sort_by_set(rows)
    cols = table_columns(rows)
    best = best_cells(rows, cols)
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    sets = list(dict.fromkeys(str(r["set"]) for r in rows))
    if len(models) == 1:
        first, label, grouped = "Set", (lambda r: str(r["set"])), False
        context = f"model {models[0]}"
    elif len(sets) == 1:
        first, label, grouped = "Model", (lambda r: str(r["model"])), False
        context = f"set {sets[0]}"
    else:
        first, label, grouped = "Set / model", (lambda r: "  " + str(r["model"])), True
        context = ""
    full_title = " - ".join(t for t in (title, context) if t) or None
    table = Table(title=escape(full_title) if full_title else None, header_style="bold",
                  box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
                  caption="↑ higher is better, ↓ lower is better; best per set in bold"
                  if len(models) > 1 else None)
    # Narrow terminals: names fold and headers wrap, but numbers are never cut.
    table.add_column(first, overflow="fold", min_width=6)
    table.add_column("N", justify="right", min_width=3)
    for key in cols:
        arrow = "↑" if SPECS[key].higher_is_better else "↓"
        table.add_column(f"{key}{arrow}", justify="right", min_width=5, overflow="fold")
    previous_set = None
    for i, row in enumerate(rows):
        if grouped and row["set"] != previous_set:
            if previous_set is not None:
                table.add_section()
            table.add_row(f"[bold]{escape(str(row['set']))}[/]")
        previous_set = row["set"]
        cells = [
            f"[bold]{format_value(k, row['metrics'].get(k))}[/]" if (i, k) in best
            else format_value(k, row["metrics"].get(k))
            for k in cols
        ]
        table.add_row(escape(label(row)), _count(row), *cells)
    return table


def to_csv(rows: Sequence[Row]) -> str:
    """One line per model x set with every metric (empty when not computed)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "set", "count", "total", *METRIC_KEYS, "seconds", "skipped",
                     "error"])
    for row in rows:
        values = [row["metrics"].get(k) for k in METRIC_KEYS]
        writer.writerow([row["model"], row["set"], row["count"], row["total"],
                         *("" if v is None else repr(float(v)) for v in values),
                         row.get("seconds", ""), len(row.get("skipped", [])),
                         row.get("error") or ""])
    return buf.getvalue()


def to_markdown(rows: Sequence[Row]) -> str:
    """A GitHub Markdown table, best value per set and column in bold."""
    rows = sort_by_set(rows)
    cols = table_columns(rows)
    best = best_cells(rows, cols)
    head = ["Model", "Set", "N", *(f"{k} {'↑' if SPECS[k].higher_is_better else '↓'}"
                                   for k in cols)]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join([":--", ":--", "--:"] + ["--:"] * len(cols)) + "|"]
    for i, row in enumerate(rows):
        cells = [
            f"**{format_value(k, row['metrics'].get(k))}**" if (i, k) in best
            else format_value(k, row["metrics"].get(k))
            for k in cols
        ]
        name = str(row["model"]).replace("|", "\\|")
        lines.append(f"| {name} | {row['set']} | {_count(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(rows: Sequence[Row]) -> str:
    """Every row in full (including skipped files), plus what each metric means."""
    doc = {
        "metrics": {m.key: {"higher_is_better": m.higher_is_better,
                            "description": m.description} for m in METRICS},
        "results": list(rows),
    }
    return json.dumps(doc, indent=2, default=str) + "\n"


def report_paths(out: str | Path) -> dict[str, Path]:
    """``out`` (with or without a .csv/.json/.md suffix) -> the three files written."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix.lower() in REPORT_SUFFIXES else out
    return {s: base.with_name(base.name + s) for s in REPORT_SUFFIXES}


def write_reports(rows: Sequence[Row], out: str | Path) -> list[Path]:
    """Write ``<out>.csv``, ``<out>.json`` and ``<out>.md``; return their paths."""
    paths = report_paths(out)
    writers = {".csv": to_csv, ".json": to_json, ".md": to_markdown}
    for suffix, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(writers[suffix](rows), encoding="utf-8")
    return list(paths.values())
