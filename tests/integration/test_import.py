"""``rtim import`` against the real server: counts, rejects, re-runs, resume, bad input.

Every test uses its own customer ids (a prefix per test), so the shared
session server can take them in any order.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from tests_support import auth_headers

from models.bulk.mapping import ColumnMapping
from serving.bulk.importer import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SERVER_GONE,
    EXIT_USAGE,
    ImportOptions,
    run_import,
)

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ColumnMapping(
    {"customer_id": "cust", "type": "kind"},
    {},
    {"page": ("page", "str"), "age": ("AGE", "int")},
)


def write_csv(path: Path, prefix: str, rows: int, customers: int, bad_every: int = 0) -> Counter:
    """A CSV of page views and profile updates; returns the expected page views per customer."""
    expected: Counter = Counter()
    with path.open("w") as f:
        f.write("cust,kind,page,AGE\n")
        for i in range(rows):
            cid = f"{prefix}-{i % customers}"
            if bad_every and i % bad_every == bad_every - 1:
                f.write(f"{cid},credit_check,,\n")  # credit_check needs attributes.result
            elif i % 4 == 0:
                f.write(f"{cid},profile_update,,{20 + i % 50}\n")
            else:
                f.write(f"{cid},page_view,/p{i % 7},\n")
                expected[cid] += 1
    return expected


def options(server: str, tmp: Path, files: list[Path], **kw: object) -> ImportOptions:
    base: dict = {
        "url": server,
        "files": [str(f) for f in files],
        "mapping": MAPPING,
        "checkpoint": tmp / "ckpt.json",
        "rejects": tmp / "rejects.csv",
        "batch_size": 200,
        "concurrency": 4,
        "quiet": True,
    }
    base.update(kw)
    return ImportOptions(**base)  # type: ignore[arg-type]


def page_views(server: str, cids: list[str]) -> Counter:
    found: Counter = Counter()
    with httpx.Client(base_url=server, timeout=30, headers=auth_headers()) as c:
        for cid in cids:
            r = c.get(f"/v1/profiles/{cid}")
            if r.status_code == 200:
                found[cid] = r.json()["counters"].get("page_view", {}).get("30d", 0)
    return found


def test_csv_import_applies_rows_and_rejects_bad_ones_in_the_apis_words(
    server: str, tmp_path: Path
) -> None:
    src = tmp_path / "events.csv"
    expected = write_csv(src, "imp-a", rows=1200, customers=40, bad_every=100)
    code, summary = run_import(options(server, tmp_path, [src]))
    assert code == EXIT_OK
    assert (summary.read, summary.rejected) == (1200, 12)
    assert summary.applied + summary.duplicates == 1188 and summary.duplicates == 0
    assert page_views(server, list(expected)) == expected
    rejects = list(csv_rows(tmp_path / "rejects.csv"))
    assert [r["line"] for r in rejects] == [str(i + 2) for i in range(99, 1200, 100)]
    assert rejects[0]["field"] == "attributes.result"
    assert rejects[0]["error"] == "credit_check needs attributes.result = pass|fail"
    # An attribute typed int arrives as an int.
    profile = httpx.get(f"{server}/v1/profiles/imp-a-0", timeout=30, headers=auth_headers()).json()
    assert isinstance(profile["attributes"]["age"], int)


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_running_the_same_import_twice_counts_nothing_twice(server: str, tmp_path: Path) -> None:
    src = tmp_path / "events.csv"
    expected = write_csv(src, "imp-b", rows=600, customers=30)
    assert run_import(options(server, tmp_path, [src]))[0] == EXIT_OK
    code, again = run_import(options(server, tmp_path, [src]))
    assert code == EXIT_OK
    assert (again.applied, again.duplicates) == (0, 600)
    assert page_views(server, list(expected)) == expected


def test_jsonl_gz_and_parquet_files_import_in_one_run(server: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "events.jsonl.gz"
    with gzip.open(jsonl, "wt") as f:
        for i in range(50):
            f.write(json.dumps({"customer_id": f"imp-c-{i % 5}", "type": "page_view"}) + "\n")
    parquet = tmp_path / "profiles.parquet"
    pq.write_table(
        pa.table(
            {
                "customer_id": [f"imp-c-{i}" for i in range(5)],
                "type": ["profile_update"] * 5,
                "income": [1000.5 * i for i in range(5)],
            }
        ),
        parquet,
    )
    code, summary = run_import(options(server, tmp_path, [jsonl, parquet], mapping=None))
    assert code == EXIT_OK
    assert (summary.read, summary.applied, summary.rejected) == (55, 55, 0)
    assert page_views(server, [f"imp-c-{i}" for i in range(5)]) == Counter(
        {f"imp-c-{i}": 10 for i in range(5)}
    )
    profile = httpx.get(f"{server}/v1/profiles/imp-c-3", timeout=30, headers=auth_headers()).json()
    assert profile["attributes"]["income"] == 3001.5


def test_bad_input_fails_before_anything_is_sent(server: str, tmp_path: Path) -> None:
    src = tmp_path / "events.csv"
    write_csv(src, "imp-d", rows=20, customers=2, bad_every=10)
    unknown = ColumnMapping({"customer_id": "customer"}, {"type": "page_view"})
    code, _ = run_import(options(server, tmp_path, [src], mapping=unknown))
    assert code == EXIT_USAGE
    code, _ = run_import(options(server, tmp_path, [src, tmp_path / "missing.csv"]))
    assert code == EXIT_USAGE
    code, _ = run_import(options(server, tmp_path, [src], strict=True))
    assert code == EXIT_FAILED
    assert page_views(server, ["imp-d-0", "imp-d-1"]) == Counter()


def test_cli_reports_an_unknown_column_by_name(server: str, tmp_path: Path) -> None:
    src = tmp_path / "events.csv"
    write_csv(src, "imp-e", rows=5, customers=1)
    out = run_cli(server, tmp_path, src, "--column", "customer_id=client", timeout=60)
    assert out.returncode == EXIT_USAGE
    assert "no column 'client'" in out.stderr and "nothing was sent" in out.stderr


def run_cli(
    server: str, tmp: Path, src: Path, *extra: str, timeout: float
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_args(server, tmp, src, *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def cli_args(server: str, tmp: Path, src: Path, *extra: str) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "serving.cli",
        "import",
        str(src),
        "--url",
        server,
        "--checkpoint",
        str(tmp / "ckpt.json"),
        "--rejects",
        str(tmp / "rejects.csv"),
        "--batch-size",
        "100",
        "--concurrency",
        "4",
        "--json",
        "--quiet",
    ]
    if not any(e.startswith("customer_id=") for e in extra):
        args += [
            "--column",
            "customer_id=cust",
            "--column",
            "type=kind",
            "--attribute",
            "page",
            "--attribute",
            "age:int=AGE",
        ]
    return args + list(extra)


def test_import_killed_half_way_resumes_and_counts_every_row_once(
    server: str, tmp_path: Path
) -> None:
    src = tmp_path / "events.csv"
    rows, bad_every = 40_000, 500
    expected = write_csv(src, "imp-k", rows=rows, customers=400, bad_every=bad_every)
    ckpt = tmp_path / "ckpt.json"
    proc = subprocess.Popen(
        cli_args(server, tmp_path, src), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 90
    done_at_kill = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                done_at_kill = json.loads(ckpt.read_text())["files"][0]["done_below"]
            except (ValueError, KeyError, IndexError):
                done_at_kill = 0
            if done_at_kill >= rows // 4:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the import finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert 0 < done_at_kill < rows
    out = subprocess.run(
        cli_args(server, tmp_path, src, "--resume"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == EXIT_OK, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["read"] == rows
    assert summary["rejected"] == rows // bad_every
    assert summary["applied"] + summary["duplicates"] == rows - rows // bad_every
    assert page_views(server, list(expected)) == expected
    rejects = csv_rows(tmp_path / "rejects.csv")
    lines = [int(r["line"]) for r in rejects]
    assert sorted(lines) == [i + 2 for i in range(bad_every - 1, rows, bad_every)]


class _VanishingProxy(BaseHTTPRequestHandler):
    """Forwards POSTs to the real server until ``budget`` runs out, then the port goes dark."""

    target = ""
    budget = 0
    server_ref: ThreadingHTTPServer | None = None
    lock = threading.Lock()

    def do_POST(self) -> None:
        cls = type(self)
        with cls.lock:
            cls.budget -= 1
            last = cls.budget <= 0
        body = self.rfile.read(int(self.headers["content-length"]))
        if cls.budget < 0:
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        r = httpx.post(
            cls.target + self.path,
            content=body,
            timeout=30,
            headers={
                "content-type": self.headers["content-type"],
                "authorization": self.headers.get("authorization", ""),
            },
        )
        self.send_response(r.status_code)
        self.send_header("content-type", r.headers["content-type"])
        self.send_header("content-length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)
        if last and cls.server_ref is not None:
            threading.Thread(target=_go_dark, args=(cls.server_ref,), daemon=True).start()

    def log_message(self, *args: object) -> None:
        pass


def _go_dark(httpd: ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()


def test_server_going_away_mid_run_stops_with_resume_advice_then_resume_finishes(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "events.csv"
    expected = write_csv(src, "imp-g", rows=3000, customers=60)
    _VanishingProxy.target, _VanishingProxy.budget = server, 5
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _VanishingProxy)
    _VanishingProxy.server_ref = httpd
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    proxy = f"http://127.0.0.1:{httpd.server_address[1]}"
    started = time.monotonic()
    code, partial = run_import(options(proxy, tmp_path, [src], retry_for_s=1.5), out=sys.stderr)
    assert code == EXIT_SERVER_GONE
    assert time.monotonic() - started < 30
    assert "--resume" in capsys.readouterr().err
    assert 0 < partial.applied < 3000
    code, summary = run_import(options(server, tmp_path, [src], resume=True))
    assert code == EXIT_OK
    assert summary.read == 3000 and summary.applied + summary.duplicates == 3000
    assert page_views(server, list(expected)) == expected


def test_ray_mode_refuses_resume_and_strict_before_reading_anything(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "serving.cli", "import", str(tmp_path / "x.csv")]
    out = subprocess.run(
        [*args, "--ray", "--resume"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == EXIT_USAGE and "--ray has no checkpoint" in out.stderr
