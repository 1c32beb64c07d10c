"""Campaign throughput: ``rtim campaign run`` over a preloaded segment, decisions per second.

Starts ``rtim serve`` (``loadtest.launcher``; journal on, fsync ``always``),
preloads ``--customers`` profiles with the real ``rtim import``, then runs the
real ``rtim campaign run`` for a rule segment (the customers aged 40 or more
of the repeat's own wave of never-contacted profiles) on email and
outbound_call, once per repeat under a new campaign id and output file.
Prints decisions/s per repeat (with the share that got an offer, the server's
CPU per decision and the other processes' share of the machine) and the median.

    .venv/bin/python -m loadtest.campaign_rate --customers 50000 --repeats 3

Shared 2-core machine: the figure is what the box gave at that moment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.bench import CpuSnapshot
from loadtest.launcher import running_server


def preload(url: str, work: Path, customers: int, env: dict[str, str], waves: int = 1) -> int:
    """Import ``customers`` profiles per wave; return the segment's size per wave.

    Each repeat runs on a wave of its own: customers no campaign has contacted
    yet, so every decision goes through scoring and arbitration. (A second
    campaign over the same customers meets the catalogue's contact caps, one
    email a week, and answers "no message" for all of them at about twice the
    rate: that measures the caps, not a campaign.)
    """
    src = work / "profiles.csv"
    members = 0
    with src.open("w") as f:
        f.write("customer_id,age,income,wave\n")
        for w in range(waves):
            for i in range(customers):
                age = 20 + (i * 7) % 60
                members += age >= 40
                f.write(f"cr{w}-{i},{age},{30_000 + (i * 37) % 90_000},{w}\n")
    cmd = [sys.executable, "-m", "serving.cli", "import", str(src), "--url", url,
           "--set", "type=profile_update", "--attribute", "age:int", "--attribute", "income:int",
           "--attribute", "wave:int",
           "--checkpoint", str(work / "ckpt.json"), "--rejects", str(work / "rejects.csv"),
           "--quiet"]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=1800, env=env)
    return members // waves


def run_waves(
    url: str,
    sid: int,
    api_key: str,
    work: Path,
    customers: int,
    repeats: int,
    batch_size: int = 500,
    concurrency: int = 4,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Preload ``repeats`` waves into a running server and campaign over each; the figures."""
    rates: list[float] = []
    offered: list[float] = []
    server_us: list[float] = []
    others: list[float] = []
    env = {**os.environ, "RTIM_API_KEY": api_key}
    members = preload(url, work, customers, env, repeats)
    for r in range(repeats):
        out = work / f"campaign-{r}.csv"
        wave = [{"fact": "attr.age", "op": ">=", "value": 40},
                {"fact": "attr.wave", "op": "==", "value": r}]  # fmt: skip
        rule = json.dumps({"all": wave})
        cmd = [sys.executable, "-m", "serving.cli", "campaign", "run", "--url", url,
               "--segment", rule, "--channels", "email,outbound_call",
               "--campaign-id", f"rate-{r}", "--out", str(out), "--json", "--quiet",
               "--batch-size", str(batch_size), "--concurrency", str(concurrency)]  # fmt: skip
        before = CpuSnapshot.take(sid, children=True)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        split = CpuSnapshot.take(sid, children=True).since(before, members)
        if done.returncode != 0:
            raise RuntimeError(f"campaign failed:\n{done.stderr[-2000:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        if summary["customers"] != members:
            raise RuntimeError(f"expected {members} customers, got {summary}")
        rates.append(summary["decisions_per_s"])
        offered.append(round(1.0 - summary["no_message_share"], 3))
        server_us.append(split["server_cpu_us_per_request"])
        others.append(split["other_cpu_pct"])
        say(f"  wave {r + 1}: {summary['decisions_per_s']:,.0f} decisions/s "
            f"({summary['customers']:,} customers in {summary['seconds']} s, "
            f"{offered[-1]:.0%} sent an offer; server CPU {server_us[-1]:.0f} µs "
            f"per decision; other processes {others[-1]:.0f}% of the machine)")  # fmt: skip
    return {"decisions_per_s_median": statistics.median(rates), "repeats": rates,
            "offered_share": offered, "segment_size": members,
            "server_cpu_us_per_decision": server_us, "other_cpu_pct": others,
            "batch_size": batch_size, "concurrency": concurrency}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--ingress-mode", choices=["haproxy", "proxy"], default="haproxy")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rtim-campaign-rate-") as tmp:
        work = Path(tmp)
        with running_server(work / "server", ingress_mode=args.ingress_mode) as server:
            result = run_waves(
                server.url, server.sid, server.api_key, work, args.customers, args.repeats,
                args.batch_size, args.concurrency, lambda line: print(line, flush=True),
            )  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
