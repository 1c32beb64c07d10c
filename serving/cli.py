"""The ``rtim`` command line.

``rtim serve`` starts an embedded local Ray (or joins one with
``--address``), the shard actors and the HTTP API, prints the URLs, and
stops cleanly on Ctrl-C. ``rtim scale --shards N`` (``--identity-shards M``)
asks a running server (over its admin API) to move partitions live onto N
profile shards (M identity shards), ``rtim rebalance``
to spread its shards over the cluster's nodes (``--drain NODE_ID``: mark that
node draining in Ray and move every shard off it before it is removed); both
print the progress until done.
``rtim evaluate`` scores a candidate policy on logged history offline
(``serving/evaluate.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from models.access import SCOPES, KeyStore
from models.audit import AuditLog
from models.errors import ValidationError
from models.settings import SettingsError, load_settings
from serving.credentials import add_api_key_argument, client_headers


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            args.config,
            {
                "host": args.host,
                "port": args.port,
                "shards": args.shards,
                "partitions": args.partitions,
                "data_dir": args.data_dir,
                "catalog": args.catalog,
                "model_registry": args.model_registry,
                "ingress_mode": args.ingress_mode,
                "ingress_replicas": args.replicas,
                "fsync": args.fsync,
                "auth": False if args.no_auth else None,
            },
        )
    except SettingsError as exc:
        print(f"rtim: {exc}", file=sys.stderr)
        return 2
    from serving import server  # imports Ray: keep `rtim --help` fast

    # Handle Ctrl-C ourselves from here on: one during start-up is honoured
    # as soon as start-up is done, so we never leave half-started actors.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    print(f"rtim: starting ({'joining ' + args.address if args.address else 'embedded Ray'})...")
    try:
        server.check_exposure(settings, args.insecure)
        made = server.ensure_local_admin_key(settings)
        runtime = server.start(settings, address=args.address)
    except (server.PortInUse, server.Exposed) as exc:
        print(f"rtim: {exc}", file=sys.stderr)
        return 1
    except server.LayoutConflict as exc:
        print(f"rtim: {exc}", file=sys.stderr)
        return 2
    if made:
        print(f"rtim: created an admin API key; it is in {made} (send it as a Bearer token)")
    print(f"rtim: serving with {runtime.shards} shards, ingress mode {settings.ingress_mode}")
    print(f"  API      {runtime.url}/v1/")
    print(f"  docs     {runtime.url}/docs")
    print(f"  OpenAPI  {runtime.url}/openapi.json")
    print(f"  health   {runtime.url}/healthz  {runtime.url}/readyz")
    print(f"  metrics  {server.metrics_url()} (Prometheus, from Ray's metrics agent)")
    if args.detach:
        print("rtim: detached; the app keeps running on the cluster")
        return 0
    print("rtim: press Ctrl-C to stop", flush=True)
    while not stopping.wait(1.0):
        pass
    print("\nrtim: stopping...", flush=True)
    server.stop(runtime)
    print("rtim: stopped")
    return 0


def _scale(args: argparse.Namespace) -> int:
    """``rtim scale [--shards N] [--identity-shards M]``: move partitions live, with progress."""
    body = {k: v for k, v in (("shards", args.shards), ("identity_shards", args.identity_shards))
            if v is not None}  # fmt: skip
    if not body:
        print("rtim: scale needs --shards and/or --identity-shards", file=sys.stderr)
        return 2
    what = " and ".join(f"{n} {k.replace('_', ' ')}" for k, n in body.items())
    return _run_job(args, "PUT", "/v1/admin/shards", body, f"moving partitions to {what}",
                    "hand-offs")  # fmt: skip


def _rebalance(args: argparse.Namespace) -> int:
    """``rtim rebalance [--drain NODE]``: spread shards over the nodes, or empty one node."""
    body = {"drain": args.drain} if args.drain else {}
    what = f"moving every shard off node {args.drain}" if args.drain else "spreading shards"
    return _run_job(args, "POST", "/v1/admin/rebalance", body, what, "shards moved")


def _run_job(
    args: argparse.Namespace, method: str, path: str, body: dict, what: str, unit: str
) -> int:
    """Start an admin job and print its progress until it is done (or ``--no-wait``)."""
    import time

    import httpx

    url = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=url, timeout=30, headers=client_headers(args.api_key)) as client:
            r = client.request(method, path, json=body)
            if r.status_code != 202:
                err = r.json().get("error", {}) if r.content else {}
                print(f"rtim: {r.status_code} {err.get('message', r.text)}", file=sys.stderr)
                return 2
            print(f"rtim: {what} ({r.json()['moves_total']} {unit})", flush=True)
            if args.no_wait:
                return 0
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                time.sleep(1.0)
                p = client.get("/v1/admin/rebalance").json()
                print(f"  {p['moves_done']}/{p['moves_total']} {unit}, "
                      f"{p['partitions_moved']} partitions moved", flush=True)  # fmt: skip
                if not p["running"]:
                    if p["error"]:
                        print(f"rtim: stalled: {p['error']}", file=sys.stderr)
                        return 1
                    m, i = p["map"], p["identity_map"]
                    print(f"rtim: done; map epoch {m['epoch']} over {m['shards']} shards, "
                          f"identity map epoch {i['epoch']} over {i['shards']} identity "
                          "shards")  # fmt: skip
                    return 0
    except httpx.HTTPError as exc:
        print(f"rtim: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(f"rtim: still running after {args.timeout:.0f}s; see {url}/v1/admin/rebalance")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtim", description="Real-time decision server")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--config", help="YAML settings file (also RTIM_CONFIG)")
    s.add_argument("--address", help="join this Ray cluster (e.g. 'auto') instead of embedding one")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--shards", type=int, help="ProfileShard actors (default: one per CPU)")
    s.add_argument("--partitions", type=int)
    s.add_argument("--replicas", type=int, help="ingress replicas")
    s.add_argument("--data-dir")
    s.add_argument("--catalog", help="catalogue YAML (default: the bundled demo)")
    s.add_argument("--model-registry", help="model registry directory (default: bundled)")
    s.add_argument("--ingress-mode", choices=["haproxy", "proxy"])
    s.add_argument("--fsync", choices=["always", "batch", "off"], help="journal fsync policy")
    s.add_argument("--detach", action="store_true", help="deploy and exit (cluster mode)")
    s.add_argument("--no-auth", action="store_true", help="serve without API keys (loopback)")
    s.add_argument(
        "--insecure", action="store_true", help="allow --no-auth on a non-loopback address"
    )
    s.set_defaults(func=_serve)
    sc = sub.add_parser("scale", help="move partitions live onto N profile/identity shards")
    sc.add_argument("--shards", type=int, help="profile shards to end with")
    sc.add_argument("--identity-shards", type=int, help="identity shards to end with")
    _job_arguments(sc)
    sc.set_defaults(func=_scale)
    rb = sub.add_parser("rebalance", help="spread shards over the cluster's nodes (or drain one)")
    rb.add_argument(
        "--drain",
        metavar="NODE_ID",
        help="mark this node draining in Ray (no shard starts there again) and move its shards off",
    )
    _job_arguments(rb)
    rb.set_defaults(func=_rebalance)
    from serving.bulk.commands import add_campaign_parser, add_export_parser, add_import_parser

    add_import_parser(sub)
    add_campaign_parser(sub)
    add_export_parser(sub)
    from serving.evaluate import add_evaluate_parser

    add_evaluate_parser(sub)

    k = sub.add_parser("keys", help="create, list and revoke API keys")
    k.add_argument("--config", help="YAML settings file (for data_dir)")
    k.add_argument("--data-dir")
    ks = k.add_subparsers(dest="action", required=True)
    kc = ks.add_parser("create", help="create a key and print its secret (once)")
    kc.add_argument("--name", required=True)
    kc.add_argument("--scopes", required=True, help=f"comma-separated, of {', '.join(SCOPES)}")
    kc.add_argument("--rps", type=float, default=0.0, help="requests a second (0: no limit)")
    kc.add_argument("--burst", type=int, default=0, help="burst (default: rps)")
    ks.add_parser("list", help="list keys (never their secrets)")
    kr = ks.add_parser("revoke", help="revoke a key; replicas refuse it within seconds")
    kr.add_argument("name")
    k.set_defaults(func=_keys)

    a = sub.add_parser("audit", help="print the audit trail, newest first")
    a.add_argument("--config", help="YAML settings file (for data_dir)")
    a.add_argument("--data-dir")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--action", help="only this action (e.g. key.create, profile.erase)")
    a.set_defaults(func=_audit)
    return parser


def _job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")
    add_api_key_argument(p)


def _data_dir(args: argparse.Namespace) -> str:
    return load_settings(args.config, {"data_dir": args.data_dir}).data_dir


def _keys(args: argparse.Namespace) -> int:
    try:
        data_dir = _data_dir(args)
        store, log = KeyStore(data_dir), AuditLog(data_dir)
        if args.action == "create":
            key, secret = store.create(args.name, args.scopes, args.rps, args.burst)
            log.append("rtim keys", "key.create", key.name, "ok", scopes=list(key.scopes))
            print(f"created key {key.name!r} with scopes {','.join(key.scopes)}")
            print("secret (shown once; send it as 'Authorization: Bearer <secret>'):")
            print(secret)
        elif args.action == "list":
            print(json.dumps([k.public() for k in store.load().keys], indent=1))
        else:
            key = store.revoke(args.name)
            log.append("rtim keys", "key.revoke", key.name, "ok")
            print(f"revoked key {key.name!r}")
    except (SettingsError, ValidationError) as exc:
        print(f"rtim: {exc}", file=sys.stderr)
        return 2
    return 0


def _audit(args: argparse.Namespace) -> int:
    try:
        entries = AuditLog(_data_dir(args)).tail(args.limit, args.action)
    except SettingsError as exc:
        print(f"rtim: {exc}", file=sys.stderr)
        return 2
    for entry in entries:
        print(json.dumps(entry))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
