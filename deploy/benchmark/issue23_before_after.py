# ruff: noqa: E501, SIM115
"""Issue 23, before/after: the same client (this tree's ``run_load`` and ``streams.drive``)
against the old server (a worktree of 50cf5e8) and the new one, interleaved.

    python deploy/benchmark/issue23_before_after.py --old /work/wt-before --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.loadtest import LoadSpec, run_load  # noqa: E402
from service.loadtest.process import free_port  # noqa: E402
from service.loadtest.streams import drive  # noqa: E402

MODEL, T = "basic_motions", 100
STATELESS = [("v1", 1, c) for c in (1, 2, 4, 16)] + [
    (p, 32, c) for p in ("v1", "v2-binary") for c in (1, 2, 4)
]


class Server:
    def __init__(self, tree: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "LSTM_SERVE_HOST": "127.0.0.1", "LSTM_SERVE_PORT": str(self.port),
                "LSTM_SERVE_MODEL_REPOSITORY": str(tree / "models" / "repository"),
                "LSTM_SERVE_LOG_LEVEL": "warning", **env}  # fmt: skip
        self.log = open(f"/tmp/issue23-server-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=tree, env=full,
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(Path(self.log.name).read_text())
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=1) as a:
                    if a.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_no_pytest() -> None:
    while subprocess.run(["pgrep", "-f", "pytest"], capture_output=True).returncode == 0:
        print("  pytest running; waiting 20 s", file=sys.stderr)
        time.sleep(20)


def load(url: str, protocol: str, batch: int, conc: int, seconds: float) -> dict[str, Any]:
    spec = LoadSpec(url=url, model=MODEL, protocol=protocol, batch=batch,  # type: ignore[arg-type]
                    timesteps=T, concurrency=conc, duration_s=seconds, warmup_s=1.0)  # fmt: skip
    r = run_load(spec)
    return {"req_s": r.requests_per_s, "seq_s": r.sequences_per_s,
            "p50": r.latency_ms["p50"], "p99": r.latency_ms["p99"], "errors": dict(r.errors)}  # fmt: skip


def streams(url: str, n: int, seconds: float, offsets: bool = False) -> dict[str, Any]:
    asyncio.run(drive(url, "v1", MODEL, 6, min(n, 64), 1.0, offsets))
    return asyncio.run(drive(url, "v1", MODEL, 6, n, seconds, offsets))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--only", default="stateless,streams,roundtrip,intra")
    args = ap.parse_args()
    trees = {"old": args.old, "new": ROOT}
    only = args.only.split(",")
    out: dict[str, Any] = {"nproc": os.cpu_count(), "loadavg": [], "rows": []}

    def note(block: str, **row: Any) -> None:
        out["rows"].append({"block": block, **row})
        print(block, row, file=sys.stderr)
        args.json.write_text(json.dumps(out, indent=2))

    def loadavg() -> None:
        out["loadavg"].append(Path("/proc/loadavg").read_text().strip())

    redis: subprocess.Popen[bytes] | None = None
    rport = free_port()
    if shutil.which("redis-server"):
        redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)  # fmt: skip
        time.sleep(0.5)
    state_url = f"redis://127.0.0.1:{rport}/0"
    room = str(max(256, args.streams))
    two = {"LSTM_SERVE_WORKERS": "2"}
    try:
        for rep in (1, 2):
            if "stateless" in only:
                for side in ("old", "new"):
                    wait_no_pytest()
                    loadavg()
                    s = Server(trees[side], two)
                    try:
                        for proto, batch, conc in STATELESS:
                            note(
                                "stateless",
                                rep=rep,
                                side=side,
                                proto=proto,
                                batch=batch,
                                conc=conc,
                                **load(s.url, proto, batch, conc, args.seconds),
                            )
                    finally:
                        s.stop()
            if "streams" in only:
                configs = [("old", "old 2w", two), ("new", "new 2w redis",
                           {**two, "LSTM_SERVE_STATE_URL": state_url}),
                           ("new", "new 1w memory", {"LSTM_SERVE_WORKERS": "1"})]  # fmt: skip
                for side, label, env in configs:
                    wait_no_pytest()
                    loadavg()
                    s = Server(trees[side], {**env, "LSTM_SERVE_MAX_WEBSOCKETS": room,
                                             "LSTM_SERVE_MAX_QUEUE_SIZE": room,
                                             "LSTM_SERVE_MAX_CONNECTIONS_PER_ADDRESS": room})  # fmt: skip
                    try:
                        note(
                            "streams",
                            rep=rep,
                            side=side,
                            config=label,
                            **streams(s.url, args.streams, args.seconds * 1.5),
                        )
                        if label == "new 2w redis":  # the same server, chunks with offsets
                            note(
                                "streams",
                                rep=rep,
                                side=side,
                                config=label + " +offsets",
                                **streams(s.url, args.streams, args.seconds * 1.5, True),
                            )
                    finally:
                        s.stop()
            if "roundtrip" in only:
                configs = [("old", "old 1w", {"LSTM_SERVE_WORKERS": "1"}),
                           ("new", "new 1w memory", {"LSTM_SERVE_WORKERS": "1"}),
                           ("new", "new 1w redis", {"LSTM_SERVE_WORKERS": "1",
                                                    "LSTM_SERVE_STATE_URL": state_url})]  # fmt: skip
                for side, label, env in configs:
                    wait_no_pytest()
                    loadavg()
                    s = Server(trees[side], env)
                    try:
                        note(
                            "roundtrip",
                            rep=rep,
                            side=side,
                            config=label,
                            **streams(s.url, 1, args.seconds),
                        )
                    finally:
                        s.stop()
            if "intra" in only:
                one = {"LSTM_SERVE_WORKERS": "1"}
                configs = [("old", "old 1w split_threads=0 (default)", one),
                           ("new", "new 1w intra_op=1", {**one, "LSTM_SERVE_INTRA_OP_THREADS": "1"}),
                           ("new", "new 1w intra_op=2", {**one, "LSTM_SERVE_INTRA_OP_THREADS": "2"})]  # fmt: skip
                for side, label, env in configs:
                    wait_no_pytest()
                    loadavg()
                    s = Server(trees[side], env)
                    try:
                        note(
                            "intra",
                            rep=rep,
                            side=side,
                            config=label,
                            **load(s.url, "v2-binary", 32, 1, args.seconds),
                        )
                    finally:
                        s.stop()
    finally:
        loadavg()
        if redis is not None:
            redis.terminate()
            redis.wait()
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
