"""Render a finished run's report in one format, writing it (and its plots) to the run's folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aifb.client.report.charts import charts
from aifb.client.report.document import build_document
from aifb.client.report.pages import to_html, to_markdown
from aifb.client.report.parquet import series_parquet
from aifb.client.runs.record import BenchmarkRecord
from aifb.mesh.auth import write_private_file
from aifb.mesh.errors import InvalidArgument

__all__ = ["FORMATS", "render_report"]

FORMATS = ("json", "md", "html", "parquet")
_FILES = {"json": "report.json", "md": "report.md", "html": "report.html",
          "parquet": "series.parquet"}


def render_report(record: BenchmarkRecord, stored: dict[str, Any], context: dict[str, Any],
                  fmt: str, directory: Path) -> bytes:
    """The report's bytes; the same bytes (and for md/html the SVG plots) land in `directory`."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})",
                              field="format")
    doc = build_document(record, stored, context)
    if fmt == "json":
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    elif fmt == "parquet":
        data = series_parquet(doc)
    else:
        svgs = charts(doc)
        for name, svg in svgs.items():
            write_private_file(directory / name, svg.encode())
        text = to_markdown(doc, list(svgs)) if fmt == "md" else to_html(doc, svgs)
        data = text.encode()
    write_private_file(directory / _FILES[fmt], data)
    return data
