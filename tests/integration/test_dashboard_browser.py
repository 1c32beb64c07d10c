"""The dashboard in a real headless browser (Debian's ``chromium``, driven over DevTools).

The test sends decisions and responses through the API, opens ``/dashboard``
with a ``reports:read`` key in sessionStorage (as the key field stores it),
and checks that the page loaded without console errors and that the charts
and tables draw exactly what the report API says, including what was sent.
The lift chart is also fed a computed experiment report (no experiment on the
shared server has arms yet). A screenshot is kept in ``var/dashboard.png``.
``make browser`` (run by ``make test`` and ``.ci/run``) installs chromium when
missing; the test skips only when it is still not there.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from models.access import KeyStore
from models.decisioning.record import ChosenOffer, DecisionRecord
from models.reporting import reports
from models.reporting.counters import ReportCounters

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "var" / "dashboard.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser)")


class Browser:
    """One headless chromium page, spoken to over the DevTools protocol."""

    def __init__(self, tmp: Path) -> None:
        self.profile = tmp / "chromium-profile"
        self.proc: subprocess.Popen | None = None
        self.ws: Any = None
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.errors: list[str] = []
        self.reader: asyncio.Task | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--window-size=1280,800", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient(timeout=10) as c:
            targets = (await c.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=None)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=1280, height=800,
                        deviceScaleFactor=1, mobile=False)  # fmt: skip

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg:
                fut = self.pending.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                continue
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                self.errors.append(json.dumps(params["args"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.errors.append(params["entry"].get("text", "")[:500])

    async def send(self, method: str, **params: Any) -> dict:
        i = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, 20)
        assert "error" not in msg, msg
        return msg["result"]

    async def eval(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                              returnByValue=True)  # fmt: skip
        assert "exceptionDetails" not in res, res["exceptionDetails"]
        return res["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 20) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.eval(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


DOM = """(() => {
  const pts = (chart) => [...document.querySelectorAll(`svg[data-chart="${chart}"] circle`)]
    .map(c => ({key: c.dataset.key, ts: +c.dataset.ts, value: +c.dataset.value}));
  return {
    status: document.getElementById('status').textContent,
    decisions: pts('decisions'), success: pts('success'), auc: pts('auc'),
    fallbacks: pts('fallbacks'),
    maturity: [...document.querySelectorAll('svg[data-chart="maturity"] rect')]
      .map(r => ({key: r.dataset.key, value: +r.dataset.value})),
    table: [...document.querySelectorAll('#table-volumes tbody tr')]
      .map(tr => [tr.dataset.key, ...[...tr.cells].slice(2, 5).map(td => +td.textContent)]),
    shards: [...document.querySelectorAll('#shards .shard')]
      .map(s => [s.dataset.shard, s.dataset.alive]),
    scrollWidth: document.documentElement.scrollWidth,
  };
})()"""


def experiment_report() -> dict:
    """A real experiment report body, from counters of known decisions."""
    counters = ReportCounters()
    t0 = 3600.0 * int(time.time() // 3600)
    for i in range(2000):
        arm = ("control", "nba", "random")[i % 3]
        r = DecisionRecord(
            decision_id=DecisionRecord.new_id(), customer_id=f"c{i}", ts=t0 + i % 3000,
            channels=["web"], catalog_version="v", model_version=None,
            offers=[ChosenOffer(offer_id="card", group="card", channel="web", treatment="t",
                                propensity=0.2, value=10.0)],
            experiment="impact", arm=arm, policy={"control": "no_message"}.get(arm, "full"),
        )  # fmt: skip
        counters.count_decision(r, {})
        if i % {"control": 20, "nba": 5, "random": 17}[arm] == 0:
            r.attribute("card", "accepted", r.ts + 1)
            counters.count_outcome(r, frozenset({"accepted"}))
    return reports.experiments(counters, t0, t0 + 3600)


async def test_dashboard_draws_what_the_report_api_says(
    server: str, server_settings, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    _, reader = KeyStore(server_settings.data_dir).create("dashboard-test", "reports:read")
    async with httpx.AsyncClient(base_url=server, timeout=30) as anon:  # assets are public
        for path in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css"):
            r = await anon.get(path)
            assert (
                r.status_code == 200
                and "default-src 'self'" in r.headers["content-security-policy"]
            )
        assert (await anon.get("/dashboard/secrets.txt")).status_code == 404
    # Traffic through the API: decisions on web, responses to half of them.
    before = (await client.get("/v1/reports/volumes", params={"channel": "web"})).json()
    events, sent = [], 0
    for i in range(12):
        cid = f"dash-{uuid.uuid4().hex[:8]}"
        d = (await client.post("/v1/decide", json={"customer_id": cid, "channel": "web",
                                                   "deadline_ms": 5000})).json()  # fmt: skip
        sent += 1
        if i % 2 == 0:
            events.append({"event_id": uuid.uuid4().hex, "customer_id": cid, "type": "response",
                           "decision_id": d["decision_id"],
                           "attributes": {"outcome": "accepted"}})  # fmt: skip
    assert (await client.post("/v1/events", json={"events": events})).status_code == 200

    browser = Browser(tmp_path)
    try:
        await browser.start()
        await browser.send("Page.navigate", url=f"{server}/dashboard")
        await browser.wait_for("document.readyState === 'complete' && !!window.RTIM")
        assert "enter an API key" in await browser.eval(
            "document.getElementById('status').textContent"
        )
        # What the key field does: store the key in sessionStorage, then load the reports.
        await browser.eval(
            f"document.getElementById('key').value = {json.dumps(reader)};"
            "document.getElementById('keyform').requestSubmit(); true"
        )
        await browser.wait_for("+(document.body.dataset.updates || 0) >= 1")
        dom = await browser.eval(DOM)
        vol = (await client.get("/v1/reports/volumes")).json()
        models = (await client.get("/v1/reports/models")).json()
        health = (await client.get("/v1/reports/health")).json()

        def key(row: dict) -> str:
            offer = row["offer_id"] if row["offer_id"] is not None else "(no message)"
            return f"{row['channel']}/{offer}"

        assert "updated" in dom["status"], dom["status"]
        drawn = {(p["key"], p["ts"]): p["value"] for p in dom["decisions"]}
        assert drawn == {(key(s), s["ts"]): s["decisions"] for s in vol["series"]}
        rates = {(p["key"], p["ts"]): p["value"] for p in dom["success"]}
        assert rates == {(key(s), s["ts"]): s["success_rate"] for s in vol["series"]
                         if s["success_rate"] is not None}  # fmt: skip
        table = {row[0]: row[1:] for row in dom["table"]}
        assert table == {key(t): [t["decisions"], t["impressions"], t["positives"]]
                         for t in vol["totals"]}  # fmt: skip
        # What this test sent is in there.
        web_before = sum(t["decisions"] for t in before["totals"])
        web_now = sum(v[0] for k, v in table.items() if k.startswith("web/"))
        assert web_now == web_before + sent
        auc = {(p["key"], p["ts"]): p["value"] for p in dom["auc"]}
        assert auc == {(m["key"], s["ts"]): s["auc"] for m in models["models"]
                       for s in m["auc_series"] if s["auc"] is not None}  # fmt: skip
        assert {m["key"]: m["value"] for m in dom["maturity"]} == {
            m["key"]: m["maturity"] for m in models["models"] if m["adaptive"]
        }
        assert dom["shards"] == [[s["name"], "true"] for s in health["shards"]]
        falls = {p["ts"]: p["value"] for p in dom["fallbacks"] if p["key"] == "fallbacks"}
        assert falls == {s["ts"]: s["fallbacks"] for s in health["fallbacks"]["series"]}
        assert dom["scrollWidth"] <= 1280  # fits a laptop screen without sideways scrolling

        # The lift chart: one CI bar per non-control arm, at the report's numbers.
        exp = experiment_report()
        await browser.eval(f"RTIM.renderExperiments({json.dumps(exp)}); true")
        bars = await browser.eval(
            "[...document.querySelectorAll('svg[data-chart=\"lift\"] g[data-arm]')].map(g => "
            "[g.dataset.arm, +g.dataset.estimate, +g.dataset.ciLow, +g.dataset.ciHigh, "
            "g.dataset.significant])"
        )
        lifts = [(a["arm"], a["lift"]["success_rate"]) for a in exp["experiments"][0]["arms"]
                 if a["lift"]]  # fmt: skip
        want = [[arm, x["estimate"], x["ci_low"], x["ci_high"], str(x["significant"]).lower()]
                for arm, x in lifts]  # fmt: skip
        assert bars == want and len(bars) == 2
        assert want[0][0] == "nba" and want[0][4] == "true"  # 20% against 5%: significant

        shot = await browser.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True
        )
        SCREENSHOT.parent.mkdir(exist_ok=True)

        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
        assert SCREENSHOT.stat().st_size > 10_000
        assert browser.errors == [], browser.errors
    finally:
        await browser.close()
