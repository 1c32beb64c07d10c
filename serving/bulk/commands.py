"""The bulk sub-commands of ``rtim``: argument parsing only, the work lives in their modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from models.bulk.mapping import EVENT_FIELDS, ColumnMapping, MappingError
from serving.credentials import add_api_key_argument


def _pair(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise MappingError(f"{what} {text!r}: expected NAME=VALUE", None)
    return key.strip(), value.strip()


def mapping_from_args(args: argparse.Namespace) -> ColumnMapping | None:
    """The column mapping from ``--mapping FILE`` with ``--column/--set/--attribute`` on top."""
    mapping = ColumnMapping()
    if args.mapping:
        try:
            raw = yaml.safe_load(Path(args.mapping).read_text())
        except OSError as exc:
            raise MappingError(f"cannot read the mapping {args.mapping}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise MappingError(f"the mapping {args.mapping} is not valid YAML: {exc}") from None
        mapping = ColumnMapping.from_dict(raw)
    columns = dict(_pair(c, "--column") for c in args.column)
    constants = dict(_pair(c, "--set") for c in args.set)
    attributes: dict[str, tuple[str, str]] = {}
    for spec in args.attribute:  # NAME[:TYPE][=COLUMN]
        head, _, column = spec.partition("=")
        name, _, kind = head.partition(":")
        attributes[name] = (column or name, kind or "str")
    flags = ColumnMapping(columns, constants, attributes)
    mapping = mapping.merged(flags)
    return None if mapping.is_empty else mapping


def add_client_options(
    p: argparse.ArgumentParser, batch: tuple[int, str], concurrency: int
) -> None:
    """The options every bulk command shares: batching, concurrency, retries, output."""
    p.add_argument("--batch-size", type=int, default=batch[0], help=batch[1])
    p.add_argument("--concurrency", type=int, default=concurrency, help="requests in flight")
    p.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        help="seconds to keep retrying an unreachable server before stopping",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _import(args: argparse.Namespace) -> int:
    from serving.bulk.importer import EXIT_USAGE, ImportOptions, run_import

    try:
        mapping = mapping_from_args(args)
        options = ImportOptions(
            url=args.url,
            api_key=args.api_key,
            files=args.files,
            mapping=mapping,
            fmt=args.format,
            strict=args.strict,
            resume=args.resume,
            checkpoint=Path(args.checkpoint),
            rejects=Path(args.rejects),
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            retry_for_s=args.retry_for,
            quiet=args.quiet,
        )
    except (MappingError, ValueError) as exc:
        print(f"rtim import: {getattr(exc, 'message', exc)}; nothing was sent", file=sys.stderr)
        return EXIT_USAGE
    if args.ray:
        if args.resume or args.strict:
            print("rtim import: --ray has no checkpoint or strict pre-check; run it without "
                  "--resume/--strict (a re-run is idempotent)", file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        return _ray_import(args, mapping)
    code, summary = run_import(options)
    if args.json:
        print(json.dumps({"exit_code": code, **summary.to_dict()}))
    elif code == 0:
        print(
            f"rtim import: {summary.files} file(s), {summary.read:,} rows: "
            f"applied {summary.applied:,}, duplicates {summary.duplicates:,}, "
            f"rejected {summary.rejected:,} (see {args.rejects}); "
            f"{summary.rows_this_run:,} rows this run in {summary.seconds:.1f} s "
            f"({summary.rate:,.0f} rows/s)"
        )
    return code


def _ray_import(args: argparse.Namespace, mapping: ColumnMapping | None) -> int:
    from serving.bulk.rayjob import run_ray_import
    from serving.bulk.sources import SourceError

    try:
        summary = run_ray_import(args.files, mapping, Path(args.rejects), args.address)
    except (SourceError, MappingError) as exc:
        print(f"rtim import: {getattr(exc, 'message', exc)}; nothing was sent", file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else f"rtim import (ray): {summary}")
    return 0


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="load customers and events from CSV, JSONL or Parquet files (gzip too)",
        description="Stream files into a running server through POST /v1/events. "
        "Without a mapping, CSV/Parquet columns named like API event fields "
        f"({', '.join(EVENT_FIELDS)}) are those fields and other columns become attributes; "
        "JSONL lines are API event objects.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    add_api_key_argument(p)
    p.add_argument("--format", choices=["csv", "jsonl", "parquet"], help="default: from the name")
    p.add_argument("--mapping", help="YAML column mapping (see README, Bulk data)")
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="take event FIELD (customer_id, type, ts, ...) from COLUMN",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a constant event field, e.g. --set type=profile_update",
    )
    p.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="NAME[:TYPE][=COLUMN]",
        help="attribute NAME read as TYPE (str|int|float|bool|auto) from COLUMN",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="validate every row first; send nothing if any row is bad",
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--checkpoint", default="rtim-import.checkpoint.json")
    p.add_argument(
        "--rejects",
        default="rtim-import.rejects.csv",
        help="bad rows: file, line, field, the API's error message",
    )
    p.add_argument("--ray", action="store_true",
                   help="run as a Ray Data job on the cluster: files or directories, read on "
                   "every node, events applied straight to the shards (no checkpoint)")  # fmt: skip
    p.add_argument("--address", help="with --ray: the Ray cluster (default: auto)")
    add_client_options(p, batch=(1000, "events per request"), concurrency=8)
    p.set_defaults(func=_import)


def _campaign_run(args: argparse.Namespace) -> int:
    from serving.bulk.campaign import EXIT_USAGE, CampaignOptions, run_campaign

    try:
        options = CampaignOptions(
            url=args.url,
            api_key=args.api_key,
            segment=args.segment,
            channels=[c.strip() for c in args.channels.split(",") if c.strip()],
            campaign_id=args.campaign_id,
            out=Path(args.out),
            limit=args.limit,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            retry_for_s=args.retry_for,
            quiet=args.quiet,
        )
    except ValueError as exc:
        print(f"rtim campaign: {exc}; nothing was sent", file=sys.stderr)
        return EXIT_USAGE
    code, summary = run_campaign(options)
    if args.json:
        print(json.dumps({"exit_code": code, **summary.to_dict()}))
    elif code == 0:
        s = summary.to_dict()
        print(
            f"rtim campaign {args.campaign_id}: {s['customers']:,} customers "
            f"({s['decided_this_run']:,} decided now, {s['skipped_done']:,} already done) "
            f"in {s['seconds']} s ({s['decisions_per_s']:,.0f} decisions/s) -> {args.out}"
        )
        print(
            f"  no message {s['no_message']:,} ({s['no_message_share']:.1%}); expected "
            f"responses {s['expected_responses']:,.1f}; expected net value "
            f"{s['expected_net_value']:,.2f}"
        )
        for offer, n in s["per_offer"].items():
            print(f"  offer {offer}: {n:,}")
        for channel, n in s["per_channel"].items():
            print(f"  channel {channel}: {n:,}")
    return code


def add_campaign_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("campaign", help="outbound campaign runs")
    csub = c.add_subparsers(dest="campaign_command", required=True)
    p = csub.add_parser(
        "run",
        help="decide for every customer of a segment into a CSV",
        description="Decide through the shards' batch decide path for a segment: a file of "
        "customer ids or a rule such as '{fact: attr.age, op: \">=\", value: 40}'. Re-running "
        "with the same --campaign-id and --out skips every customer already decided.",
    )
    p.add_argument("--segment", required=True, metavar="FILE_OR_RULE")
    p.add_argument("--channels", required=True, help="comma-separated, e.g. email,outbound_call")
    p.add_argument("--campaign-id", required=True)
    p.add_argument("--out", required=True, help="output CSV (also the campaign's done-set)")
    p.add_argument("--limit", type=int, help="decide for at most N customers in all")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    add_api_key_argument(p)
    add_client_options(p, batch=(500, "customers per request"), concurrency=4)
    p.set_defaults(func=_campaign_run)


def instant(text: str, now: float) -> float:
    """``--since``/``--until``: unix seconds, ISO 8601, ``now``, or a duration ago (``24h``)."""
    from datetime import datetime

    from models.decisioning.facts import parse_duration

    text = text.strip()
    if text == "now":
        return now
    try:
        return float(text)
    except ValueError:
        pass
    if text[-1:] in "smhdw" and text[:-1].replace(".", "", 1).isdigit():
        return now - parse_duration(text)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"cannot read the time {text!r}; give unix seconds, ISO 8601 "
                         "or a duration such as 24h") from None  # fmt: skip


def _export_history(args: argparse.Namespace) -> int:
    import time

    from serving.bulk.export import EXIT_USAGE
    from serving.bulk.history_export import HistoryExportOptions, run_history_export

    try:
        now = time.time()
        options = HistoryExportOptions(
            out=Path(args.out or f"history.{args.format}"),
            since=instant(args.since, now),
            until=instant(args.until, now),
            fmt=args.format,
            **_export_client(args),
        )
    except ValueError as exc:
        print(f"rtim export history: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code, summary = run_history_export(options)
    return _report(args, code, summary, "rtim export history", "rows", "decisions")


def _export_client(args: argparse.Namespace) -> dict:
    """The options every export takes from the shared client arguments."""
    return {"url": args.url, "api_key": args.api_key, "page_size": args.batch_size,
            "retry_for_s": args.retry_for, "quiet": args.quiet}  # fmt: skip


def _report(
    args: argparse.Namespace, code: int, summary: dict, job: str, key: str, what: str
) -> int:
    """An export's summary line (or JSON with ``--json``); the exit code."""
    if args.json:
        print(json.dumps({"exit_code": code, **summary}))
    elif code == 0:
        print(
            f"{job}: {summary[key]:,} {what} -> {summary['out']} in "
            f"{summary['seconds']} s ({summary[key + '_per_s']:,.0f} {what}/s)"
        )
    return code


def _export_profiles(args: argparse.Namespace) -> int:
    from serving.bulk.export import EXIT_USAGE, ExportOptions, run_export

    try:
        options = ExportOptions(
            out=Path(args.out), fmt=args.format, segment=args.segment, **_export_client(args)
        )
    except ValueError as exc:
        print(f"rtim export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code, summary = run_export(options)
    return _report(args, code, summary, "rtim export", "profiles", "profiles")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="stream data out of a running server")
    esub = e.add_subparsers(dest="export_command", required=True)
    p = esub.add_parser("profiles", help="every profile, or a segment's, to JSONL or Parquet")
    p.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    p.add_argument("--out", required=True, help="output file (.jsonl, .jsonl.gz or .parquet)")
    p.add_argument("--segment", metavar="RULE", help="only customers matching this rule")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    add_api_key_argument(p)
    add_client_options(p, batch=(1000, "profiles per request"), concurrency=1)
    p.set_defaults(func=_export_profiles)
    h = esub.add_parser(
        "history", help="the interaction history of a time range (decisions joined with outcomes)"
    )
    h.add_argument(
        "--since", required=True, help="unix seconds, ISO 8601, or a duration ago (24h, 7d)"
    )
    h.add_argument("--until", default="now", help="unix seconds, ISO 8601, a duration ago, or now")
    h.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    h.add_argument("--out", help="output file (.jsonl, .jsonl.gz or .parquet); "
                                 "default history.<format>")  # fmt: skip
    h.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    add_api_key_argument(h)
    add_client_options(h, batch=(2000, "rows per request"), concurrency=1)
    h.set_defaults(func=_export_history)
