"""The bulk sub-commands of ``rtim``: argument parsing only, the work lives in their modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from models.bulk.mapping import EVENT_FIELDS, ColumnMapping, MappingError


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


def _import(args: argparse.Namespace) -> int:
    from serving.bulk.importer import EXIT_USAGE, ImportOptions, run_import

    try:
        mapping = mapping_from_args(args)
        options = ImportOptions(
            url=args.url,
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
    p.add_argument("--batch-size", type=int, default=1000, help="events per request")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        help="seconds to keep retrying an unreachable server before stopping",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_import)
