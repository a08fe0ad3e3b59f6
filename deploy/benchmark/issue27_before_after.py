"""Issue 27, before/after in one sitting: the benchmark (``service.loadtest.benchmark``)
run from the old tree and from this one, interleaved, then the service's rows side by
side (requests/s and server CPU per request, each run's own figures).

    python deploy/benchmark/issue27_before_after.py --old /work/wt-before --repeats 2 \\
        --out deploy/benchmark/issue27-before-after.md

Each tree runs its own benchmark (its own server, client and floor); only the service
rows and streams are compared, since the floor's launcher changed in this issue.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run(tree: Path, seconds: float, out: Path) -> dict[str, Any]:
    """One whole benchmark from ``tree`` (its code, its server), its JSON."""
    command = [sys.executable, "-m", "service.loadtest.benchmark", "--seconds", str(seconds),
               "--redis", "--no-costly", "--json", str(out)]  # fmt: skip
    subprocess.run(command, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def rows(result: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """label -> (req/s or steps/s, server CPU µs per request or step)."""
    found = {
        r["label"]: (r["requests_per_s"], r["server_cpu_us_per_request"])
        for r in result["runs"]["batching on"]
        if r["spec"].get("rate") is None
    }
    for s in result.get("streams", []):
        found[f"1,000 streams, {s['mode']}"] = (s["steps_per_s"], s["server_cpu_us_per_step"])
    return found


def _joined(runs: list[dict[str, tuple[float, float]]], label: str, i: int) -> str:
    """One figure of ``label`` from each run, ``a / b``."""
    return " / ".join(f"{r[label][i]:.0f}" for r in runs)


def table(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    old, new = [rows(r) for r in before], [rows(r) for r in after]
    lines = [
        "| point | before req/s | after req/s | before CPU µs | after CPU µs |",
        "|---|---|---|---|---|",
    ]
    for label in new[0]:
        if not all(label in r for r in old + new):
            continue
        cells = [_joined(runs, label, i) for i in (0, 1) for runs in (old, new)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old", type=Path, required=True, help="a worktree of the old commit")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    for i in range(args.repeats):  # interleaved, so drift on the machine hits both alike
        before.append(run(args.old.resolve(), args.seconds, Path(f"/tmp/issue27-before{i}.json")))
        after.append(run(ROOT, args.seconds, Path(f"/tmp/issue27-after{i}.json")))
    args.out.write_text(table(before, after) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
