"""``rtim evaluate``: off-policy evaluation of a candidate policy on a logged history.

Reads an RTIM history export (JSONL or parquet) or a minimal bandit log
(``docs/evaluation.md``), streaming, with progress on stderr; replays the
candidate catalogue (``--policy``) and model (``--model`` from ``--registry``)
on each logged context; prints IPS, SNIPS and DR estimates with their
bootstrap intervals, effective sample sizes and warnings, as a table or JSON.
Bad input ends with a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from models.errors import RtimError


def add_evaluate_parser(sub: Any) -> None:
    e = sub.add_parser(
        "evaluate",
        help="estimate what a candidate catalogue/model would have earned on logged history",
        description=__doc__.split("\n\n")[1],
    )
    e.add_argument(
        "--history", required=True, help="history export or bandit log (.jsonl|.parquet)"
    )
    e.add_argument("--policy", help="candidate catalogue YAML (needed for RTIM history)")
    e.add_argument("--model", default="", help="candidate model version (default: the newest)")
    e.add_argument("--registry", help="model registry directory (default: the bundled one)")
    e.add_argument(
        "--reward", choices=["positive", "value"], default="positive",
        help="1 if any outcome is positive (default), or the outcomes' value sum",
    )  # fmt: skip
    e.add_argument("--format", choices=["table", "json"], default="table")
    e.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument(
        "--min-probability", type=float, default=0.01,
        help="logged probabilities under this are clipped up to it (default 0.01)",
    )  # fmt: skip
    e.add_argument(
        "--min-ess", type=float, default=100.0,
        help="warn when the effective sample size is under this (default 100)",
    )  # fmt: skip
    e.add_argument("--quiet", action="store_true", help="no progress on stderr")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = _evaluate(args)
    except (RtimError, ValueError, OSError) as exc:
        print(f"rtim evaluate: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1) if args.format == "json" else render_table(result)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `rtim evaluate ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from models.evaluation.estimators import EvaluationSettings, evaluate
    from models.evaluation.logs import read_log
    from serving.bulk.progress import Progress

    settings = EvaluationSettings(
        bootstrap=args.bootstrap, seed=args.seed, min_probability=args.min_probability,
        min_ess=args.min_ess,
    )  # fmt: skip
    policy = _candidate(args) if args.policy else None
    progress = Progress("evaluate", quiet=args.quiet)
    done = [0]

    def report(rows: int, fraction: float) -> None:
        done[0] = rows
        progress.update(rows, fraction)

    log, skipped, kind = read_log(
        args.history, policy.add_row if policy is not None else None, report
    )
    progress.finish(done[0])
    if kind == "minimal" and policy is not None:
        raise ValueError(
            "--policy is for RTIM history; a minimal bandit log carries the candidate's "
            "probabilities in target_probabilities"
        )
    evaluation = evaluate(log, settings)
    for reason, count in skipped.items():
        evaluation.skipped[reason] = count
        evaluation.warnings[reason] = f"{count} row(s) skipped: {_SKIPS[reason]}"
    evaluation.rows = done[0]
    out = evaluation.to_dict()
    out["format"] = kind
    if policy is not None:
        out["candidate"] = {
            "catalog_version": policy.catalog.version,
            "model_version": str(getattr(policy.scorer, "version", "")),
            "actions": dict(sorted(policy.actions.items(), key=lambda kv: -kv[1])),
        }
    return out


_SKIPS = {
    "no_context": "no logged context (history context logging was off)",
    "fallback": "fallback answers (a timeout, not a policy's choice)",
    "slate": "decisions of more than one offer (a slate's joint probability is not logged)",
}


def _candidate(args: argparse.Namespace) -> Any:
    from models.decisioning.catalog import load_catalog
    from models.evaluation.replay import CandidatePolicy
    from models.learning.registry import DEMO_REGISTRY, scorer_for_version

    if not Path(args.policy).is_file():
        raise ValueError(f"--policy {args.policy}: no such catalogue file")
    catalog = load_catalog(Path(args.policy))
    scorer, _ = scorer_for_version(args.registry or DEMO_REGISTRY, args.model, catalog.group_of)
    return CandidatePolicy(catalog, scorer, args.reward)


def render_table(result: dict[str, Any]) -> str:
    """The human form of an evaluation."""
    conf = round(result["confidence"] * 100)
    lines = []
    cand = result.get("candidate")
    if cand:
        lines.append(f"candidate: catalogue {cand['catalog_version']}, "
                     f"model {cand['model_version']}")  # fmt: skip
    skipped = ", ".join(f"{k} {v}" for k, v in result["skipped"].items()) or "none"
    lines.append(f"rows: {result['rows']} read, {result['used']} used; skipped: {skipped}")
    logged = result["logged_value"]
    lines.append(f"logged policy's value: {'-' if logged is None else f'{logged:.6g}'}")
    lines.append("")
    head = f"{'estimator':<10}{'estimate':>12}  {f'{conf}% CI':<25}{'ESS':>10}{'n':>9}  warnings"
    lines += [head, "-" * len(head)]
    for e in result["estimates"]:
        est = "-" if e["estimate"] is None else f"{e['estimate']:.6g}"
        ci = "-" if e["ci_low"] is None else f"[{e['ci_low']:.6g}, {e['ci_high']:.6g}]"
        lines.append(f"{e['estimator']:<10}{est:>12}  {ci:<25}{e['ess']:>10.1f}{e['n']:>9}  "
                     f"{','.join(e['warnings']) or '-'}")  # fmt: skip
    if result["warnings"]:
        lines.append("")
        lines += [f"warning: {msg}" for msg in result["warnings"].values()]
    return "\n".join(lines)
