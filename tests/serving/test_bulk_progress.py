"""The bulk commands' progress line: rows, rows/s, percent and ETA; quiet prints nothing."""

from __future__ import annotations

import io
import re

from serving.bulk.progress import Progress


def test_progress_line_shows_rows_rate_percent_and_eta() -> None:
    out = io.StringIO()
    progress = Progress("import", out, interval_s=0.0)
    progress.started -= 10.0  # ten seconds in
    progress.update(50_000, 0.25, "applied 49,990")
    line = out.getvalue().strip()
    assert re.fullmatch(
        r"import: 50,000 rows  5,\d{3} rows/s  25%  ETA 0:00:(29|30)  applied 49,990", line
    ), line


def test_progress_is_rate_limited_and_quiet_means_silent() -> None:
    out = io.StringIO()
    progress = Progress("export", out, interval_s=3600.0)
    progress.update(1, None, force=True)
    progress.update(2, None)
    assert out.getvalue().count("\n") == 1 and "ETA" not in out.getvalue()
    silent = io.StringIO()
    Progress("x", silent, quiet=True).finish(10)
    assert silent.getvalue() == ""
