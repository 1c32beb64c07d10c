"""Summarise a ``py-spy record -f raw`` file: where a process's samples went.

``python -m loadtest.stacks FILE [--top N]`` prints the share of samples
whose stack contains each function (inclusive) and the share spent in each
function itself (self), top N of each. Idle samples (``--idle`` off) are
counted apart so the shares are of busy time. Used for the before/after
profiles in the README's Performance section.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

IDLE = ("select (selectors.py", "epoll", "_run_once (asyncio", "run_forever", "poll (")


def summarise(path: str, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    busy = idle = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            leaf = frames[-1]
            if any(m in leaf for m in IDLE):
                idle += n
                continue
            busy += n
            self_[_short(leaf)] += n
            for f in set(map(_short, frames)):
                inclusive[f] += n
    out = [f"{path}: {busy} busy samples, {idle} idle"]
    for title, table in (("inclusive", inclusive), ("self", self_)):
        out.append(f"-- {title}")
        for name, n in table.most_common(top):
            out.append(f"{100.0 * n / max(busy, 1):6.1f}%  {name}")
    return "\n".join(out)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({file})" if file else name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    print(summarise(args.file, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
