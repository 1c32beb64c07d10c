"""``rtim campaign run``: decide for every customer of a segment, in batches, into a CSV.

A segment is a file of customer ids (one per line, or a CSV with a
``customer_id`` column) or a rule in the catalogue's rule language, evaluated
in the shards (``POST /v1/segments/members``, paged per shard, the shards'
pages taken in turn so every batch keeps every shard busy). Its customers
go, ``batch_size`` at a time with ``concurrency`` requests in flight, through
``POST /v1/decide/batch`` — the shards' batch decide path, so contact caps,
channel costs and impressions apply as for any decision. Each answer becomes
one output row per customer.

**Resumable and idempotent per campaign id.** The output file is the
campaign's done-set: every row carries the campaign id and the customer id,
and a re-run with the same ``--out`` and ``--campaign-id`` reads it first and
skips every customer already in it, so nobody is decided (and no impression
counted) twice for the rows written. A batch the server decided but whose
answer was lost (crash or kill between the server's answer and the write) is
sent again on resume with the same ``idempotency_key`` (``campaign:<id>``):
the shards answer the decisions they logged for it instead of deciding again,
as long as those are still in their decision logs (``decision_log_size``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from models.decisioning.segments import parse_segment_rule
from models.errors import ValidationError
from serving.bulk.progress import Progress
from serving.bulk.transport import ImportAborted, RetryingClient, ServerGone
from serving.credentials import client_headers

OUT_COLUMNS = ("campaign_id", "customer_id", "decision_id", "offer_id", "channel", "treatment",
               "propensity", "probability", "priority", "value", "experiment_arm")  # fmt: skip
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SERVER_GONE = 0, 1, 2, 3
_OFFER_FIELDS = OUT_COLUMNS[3:10]  # read from the answer's first offer
_OFFER, _CHANNEL, _PROPENSITY, _VALUE = map(
    OUT_COLUMNS.index, ("offer_id", "channel", "propensity", "value")
)
_NO_OFFER: dict[str, Any] = {}


class CampaignError(Exception):
    """Bad campaign input (segment, channels, output file): nothing was sent."""


@dataclass
class CampaignOptions:
    """Who to decide for, on which channels, and where the answers go."""

    url: str
    segment: str
    channels: list[str]
    campaign_id: str
    out: Path
    limit: int | None = None
    batch_size: int = 500
    concurrency: int = 4
    page_size: int = 5000
    retry_for_s: float = 60.0
    quiet: bool = False
    api_key: str | None = None  # see serving/credentials.py

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("give at least one channel")
        if not self.campaign_id:
            raise ValueError("a campaign id is required")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if not 1 <= self.batch_size <= 10_000 or not 1 <= self.concurrency <= 64:
            raise ValueError("batch size must be 1..10000 and concurrency 1..64")


@dataclass
class CampaignSummary:
    """Campaign statistics over every row of the output file (this run and earlier ones)."""

    customers: int = 0
    decided_this_run: int = 0
    skipped_done: int = 0
    no_message: int = 0
    per_offer: Counter = field(default_factory=Counter)
    per_channel: Counter = field(default_factory=Counter)
    expected_responses: float = 0.0
    expected_net_value: float = 0.0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.decided_this_run / self.seconds if self.seconds > 0 else 0.0

    def add(self, row: Sequence[str], costs: dict[str, float]) -> None:
        """Count one output row (in ``OUT_COLUMNS`` order)."""
        self.customers += 1
        offer, channel = row[_OFFER], row[_CHANNEL]
        if not offer:
            self.no_message += 1
            return
        self.per_offer[offer] += 1
        self.per_channel[channel] += 1
        p = float(row[_PROPENSITY] or 0.0)
        self.expected_responses += p
        self.expected_net_value += p * float(row[_VALUE] or 0.0) - costs.get(channel, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "customers": self.customers,
            "decided_this_run": self.decided_this_run,
            "skipped_done": self.skipped_done,
            "no_message": self.no_message,
            "no_message_share": round(self.no_message / self.customers, 4) if self.customers else 0,
            "per_offer": dict(self.per_offer.most_common()),
            "per_channel": dict(self.per_channel.most_common()),
            "expected_responses": round(self.expected_responses, 3),
            "expected_net_value": round(self.expected_net_value, 2),
            "seconds": round(self.seconds, 3),
            "decisions_per_s": round(self.rate, 1),
        }


def _ids_from_file(path: Path) -> Iterator[str]:
    """Customer ids, streamed: one per line, or the ``customer_id`` column of a CSV."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        column = 0
        for n, row in enumerate(reader):
            if not row or (not row[0].strip() and len(row) == 1):
                continue
            if n == 0 and "customer_id" in row:
                column = row.index("customer_id")
                continue
            if column < len(row) and row[column].strip():
                yield row[column].strip()


def row_of(campaign_id: str, answer: dict[str, Any]) -> tuple[str, ...]:
    """The output row for one decide answer (the first offer; empty offer = no message)."""
    offers = answer.get("offers")
    o = offers[0] if offers else _NO_OFFER
    arm = answer.get("experiment_arm") or o.get("experiment_arm")
    return (
        campaign_id,
        answer["customer_id"],
        answer["decision_id"],
        *["" if (v := o.get(k)) is None else str(v) for k in _OFFER_FIELDS],
        "" if arm is None else str(arm),
    )


class CampaignRun:
    """One run of one campaign; see the module docstring."""

    def __init__(self, options: CampaignOptions, out: TextIO | None = None) -> None:
        self.options = options
        self.log = out or sys.stderr
        self.summary = CampaignSummary()
        self.rule: dict[str, Any] | None = None
        self.ids_file: Path | None = None
        self.done: set[str] = set()
        self.costs: dict[str, float] = {}
        self._writer: Any = None
        self._out: TextIO | None = None

    def prepare(self) -> None:
        """Check the segment and the output file; load the done-set. Sends nothing."""
        opts = self.options
        path = Path(opts.segment)
        if path.is_file():
            self.ids_file = path
        else:
            try:
                self.rule = parse_segment_rule(opts.segment)
            except ValidationError as exc:
                raise CampaignError(
                    f"--segment {opts.segment!r} is neither a file nor a valid rule: {exc.message}"
                ) from None
        if opts.out.exists():
            self._load_done(opts.out)

    def _load_done(self, out: Path) -> None:
        with out.open("r+", newline="", encoding="utf-8") as f:
            text_end = f.seek(0, 2)
            if text_end:
                f.seek(max(0, text_end - 1))
                if f.read(1) != "\n":  # a row cut by a crash: drop it, it is decided again
                    f.seek(0)
                    keep = f.read().rfind("\n") + 1
                    f.truncate(keep)
        with out.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is not None and tuple(header) != OUT_COLUMNS:
                raise CampaignError(f"{out} is not a campaign output file (columns differ)")
            for row in reader:
                if len(row) != len(OUT_COLUMNS):
                    raise CampaignError(f"{out} line {reader.line_num}: not a campaign row")
                if row[0] != self.options.campaign_id:
                    raise CampaignError(
                        f"{out} holds campaign {row[0]!r}, not "
                        f"{self.options.campaign_id!r}: choose another --out"
                    )
                self.done.add(row[1])
                self.summary.add(row, {})  # costs are re-applied below, once known

    async def _segment(self, sender: RetryingClient) -> AsyncIterator[str]:
        if self.ids_file is not None:
            for n, cid in enumerate(_ids_from_file(self.ids_file)):
                if n % 1000 == 999:
                    await asyncio.sleep(0)
                yield cid
            return
        first = await self._page(sender, 0, None)
        shards = first["shards"]
        rest = await asyncio.gather(*(self._page(sender, s, None) for s in range(1, shards)))
        # One cursor per shard, taken in turn: a batch then holds customers of
        # every shard and the replica decides for them on all shards at once
        # (shard after shard would leave every shard but one idle). The next
        # page of a shard is fetched while its current page is decided.
        live: dict[int, tuple[Iterator[str], asyncio.Task | None]] = {
            s: self._cursor(sender, s, body) for s, body in enumerate([first, *rest])
        }
        try:
            while live:
                for s in list(live):
                    ids, ahead = live[s]
                    cid = next(ids, None)
                    while cid is None and ahead is not None:
                        ids, ahead = live[s] = self._cursor(sender, s, await ahead)
                        cid = next(ids, None)
                    if cid is None:
                        del live[s]
                    else:
                        yield cid
        finally:
            for _, ahead in live.values():
                if ahead is not None and ahead.done() and not ahead.cancelled():
                    ahead.exception()  # retrieved: the run already stops for its own reason
                elif ahead is not None:
                    ahead.cancel()

    def _cursor(
        self, sender: RetryingClient, shard: int, body: dict[str, Any]
    ) -> tuple[Iterator[str], asyncio.Task | None]:
        """The ids of one page, and the fetch of the shard's next page (None: last)."""
        after = body["next"]
        ahead = None if after is None else asyncio.create_task(self._page(sender, shard, after))
        return iter(body["ids"]), ahead

    async def _page(self, sender: RetryingClient, shard: int, after: Any) -> dict[str, Any]:
        status, body = await sender.post(
            "/v1/segments/members",
            {"rule": self.rule, "shard": shard, "after": after, "limit": self.options.page_size},
            msgpack_answer=True,
        )
        if status != 200:
            raise ImportAborted(f"the server refused the segment (HTTP {status}): {body}")
        return body

    async def _catalog(self, client: httpx.AsyncClient) -> None:
        """Channel costs (for expected net value) and a check of the channels; sends nothing."""
        try:
            resp = await client.get("/v1/catalog")
        except httpx.TransportError as exc:
            raise ServerGone(f"cannot reach {client.base_url}: {exc}") from None
        if resp.status_code != 200:
            raise ImportAborted(f"cannot read the catalogue (HTTP {resp.status_code})")
        channels = resp.json().get("channels", {})
        unknown = [c for c in self.options.channels if c not in channels]
        if unknown:
            raise CampaignError(
                f"unknown channel(s) {', '.join(unknown)}; the catalogue has {', '.join(channels)}"
            )
        self.costs = {name: float(spec.get("cost", 0.0)) for name, spec in channels.items()}

    async def _decide(self, sender: RetryingClient, batch: list[str]) -> None:
        opts = self.options
        status, body = await sender.post(
            "/v1/decide/batch",
            {
                "customer_ids": batch,
                "channels": opts.channels,
                "context": {"campaign_id": opts.campaign_id},
                # A batch decided but not written (crash, kill) is answered again
                # with the same decisions on resume, not decided twice.
                "idempotency_key": f"campaign:{opts.campaign_id}",
            },
            msgpack_answer=True,
        )
        if status != 200:
            message = body.get("error", {}).get("message") if isinstance(body, dict) else body
            raise ImportAborted(f"the server refused a batch (HTTP {status}): {message}")
        assert self._writer is not None and self._out is not None
        rows = [row_of(opts.campaign_id, answer) for answer in body["decisions"]]
        self._writer.writerows(rows)
        for row in rows:
            self.summary.add(row, self.costs)
        self._out.flush()
        self.summary.decided_this_run += len(batch)

    async def run(self) -> CampaignSummary:
        opts = self.options
        started = time.monotonic()
        progress = Progress("campaign", self.log, quiet=opts.quiet)
        limits = httpx.Limits(max_connections=opts.concurrency + 1)
        async with httpx.AsyncClient(
            base_url=opts.url, timeout=60.0, limits=limits, headers=client_headers(opts.api_key)
        ) as client:
            await self._catalog(client)
            self._reprice_done()
            sender = RetryingClient(client, opts.retry_for_s, opts.quiet, "campaign")
            fresh = not opts.out.exists()
            self._out = opts.out.open("a", newline="", encoding="utf-8")
            self._writer = csv.writer(self._out)
            if fresh:
                self._writer.writerow(OUT_COLUMNS)
            in_flight: set[asyncio.Task] = set()
            batch: list[str] = []
            budget = None if opts.limit is None else max(0, opts.limit - len(self.done))
            try:
                # Closed as soon as the loop ends: a --limit stops the pages fetched ahead.
                async with contextlib.aclosing(self._segment(sender)) as segment:
                    async for cid in segment:
                        if cid in self.done:
                            self.summary.skipped_done += 1
                            continue
                        if budget is not None:
                            if budget == 0:
                                break
                            budget -= 1
                        self.done.add(cid)  # a segment listing a customer twice decides once
                        batch.append(cid)
                        if len(batch) >= opts.batch_size:
                            await self._launch(sender, batch, in_flight)
                            batch = []
                            progress.update(self.summary.decided_this_run, None, self._counts())
                if batch:
                    await self._launch(sender, batch, in_flight)
                while in_flight:
                    await _first_of(in_flight)
            except BaseException:
                for task in in_flight:
                    if task.done() and not task.cancelled():
                        task.exception()
                    else:
                        task.cancel()
                raise
            finally:
                self._out.close()
                self.summary.seconds = time.monotonic() - started
        progress.finish(self.summary.decided_this_run, None, self._counts())
        return self.summary

    def _reprice_done(self) -> None:
        """Rows read from an earlier run were summed without channel costs: add them now."""
        s = self.summary
        for channel, n in s.per_channel.items():
            s.expected_net_value -= n * self.costs.get(channel, 0.0)

    def _counts(self) -> str:
        s = self.summary
        return f"customers {s.customers:,}  no message {s.no_message:,}"

    async def _launch(self, sender: RetryingClient, batch: list[str], in_flight: set) -> None:
        while len(in_flight) >= self.options.concurrency:
            await _first_of(in_flight)
        in_flight.add(asyncio.create_task(self._decide(sender, batch)))


async def _first_of(tasks: set[asyncio.Task]) -> None:
    """Wait for one task to finish; re-raise its error."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        tasks.discard(task)
        task.result()


def run_campaign(
    options: CampaignOptions, out: TextIO | None = None
) -> tuple[int, CampaignSummary]:
    """Check, run, report; return ``(exit code, summary)``."""
    out = out or sys.stderr
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run = CampaignRun(options, out)
    try:
        run.prepare()
    except CampaignError as exc:
        print(f"rtim campaign: {exc}; nothing was sent", file=out)
        return EXIT_USAGE, run.summary
    try:
        summary = asyncio.run(run.run())
    except CampaignError as exc:
        print(f"rtim campaign: {exc}; nothing was sent", file=out)
        return EXIT_USAGE, run.summary
    except ServerGone as exc:
        print(
            f"\nrtim campaign: {exc}.\n  Every decided customer is in {options.out}; run the "
            "same command again (same --campaign-id and --out) to continue.",
            file=out,
        )
        return EXIT_SERVER_GONE, run.summary
    except ImportAborted as exc:
        print(f"\nrtim campaign: {exc}", file=out)
        return EXIT_FAILED, run.summary
    return EXIT_OK, summary
