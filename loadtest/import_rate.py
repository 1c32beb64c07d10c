"""Import throughput: ``rtim import`` of a generated CSV into a fresh server with the journal on.

Starts ``rtim serve`` (``loadtest.launcher``, fsync as given: default
``always``, the server's default), writes a CSV of ``--rows`` events per
repeat (page views and profile updates over ``--customers`` customers, new
customer ids each repeat so nothing is a duplicate), runs the real ``rtim
import`` command on it, and reports events/s per repeat and the median.

    .venv/bin/python -m loadtest.import_rate                 # 200,000 rows x 3 repeats
    .venv/bin/python -m loadtest.import_rate --rows 50000 --repeats 1

The machine is shared with the server (and, on a developer box, with other
work): the figure is what this box gave at that moment, not a capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.launcher import running_server


def write_events(path: Path, prefix: str, rows: int, customers: int) -> None:
    with path.open("w") as f:
        f.write("cust,kind,page,AGE\n")
        for i in range(rows):
            cid = f"{prefix}-{i % customers}"
            if i % 4 == 0:
                f.write(f"{cid},profile_update,,{20 + i % 50}\n")
            else:
                f.write(f"{cid},page_view,/p{i % 7},\n")


def run_import(
    url: str, src: Path, work: Path, batch: int, concurrency: int, api_key: str | None
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "serving.cli",
        "import",
        str(src),
        "--url",
        url,
        "--column",
        "customer_id=cust",
        "--column",
        "type=kind",
        "--attribute",
        "page",
        "--attribute",
        "age:int=AGE",
        "--batch-size",
        str(batch),
        "--concurrency",
        str(concurrency),
        "--checkpoint",
        str(work / "ckpt.json"),
        "--rejects",
        str(work / "rejects.csv"),
        "--json",
        "--quiet",
    ]
    started = time.monotonic()
    env = {**os.environ, "RTIM_API_KEY": api_key} if api_key else None
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"import failed ({out.returncode}):\n{out.stderr[-2000:]}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(wall, 2)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--fsync", choices=["always", "batch", "off"], default="always")
    p.add_argument("--ingress-mode", choices=["haproxy", "proxy"], default="haproxy")
    p.add_argument("--url", help="use this running server instead of starting one")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="rtim-import-rate-") as tmp:
        work = Path(tmp)

        def measure(url: str, api_key: str | None = None) -> None:
            for r in range(args.repeats):
                src = work / f"events-{r}.csv"
                write_events(src, f"rate{int(time.time())}-{r}", args.rows, args.customers)
                summary = run_import(url, src, work, args.batch_size, args.concurrency, api_key)
                src.unlink()
                if summary["applied"] != args.rows:
                    raise SystemExit(f"expected {args.rows} applied, got {summary}")
                results.append(summary)
                print(
                    f"repeat {r + 1}: {summary['rows_per_s']:,.0f} events/s "
                    f"({summary['read']:,} rows in {summary['seconds']} s)",
                    flush=True,
                )

        if args.url:
            measure(args.url)
        else:
            with running_server(
                work / "server", ingress_mode=args.ingress_mode, fsync=args.fsync
            ) as server:
                measure(server.url, server.api_key)
    rates = [r["rows_per_s"] for r in results]
    print(
        json.dumps(
            {
                "events_per_s_median": statistics.median(rates),
                "repeats": rates,
                "rows": args.rows,
                "fsync": args.fsync,
                "ingress_mode": args.ingress_mode,
                "batch_size": args.batch_size,
                "concurrency": args.concurrency,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
