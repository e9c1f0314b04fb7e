"""Load test of `trocr-tune serve` on localhost: bounded, it stops by itself.

    python -m trocr_tune.serve.load_test [--model M] [--clients 8] [--seconds 30] ...

1. Offline: the model decodes the lines in batches of --max-batch-size as `predict` does (after a
   warm-up batch); its lines/s and its reading of every line are the reference.
2. Load: `trocr-tune serve` runs as a child process on a free localhost port; --clients threads
   post --lines-per-request random lines each, back to back, for --seconds. Every request must
   be answered, and every line must come back with its own id and the text offline decoding gave
   it (a text that belongs to another line of the request counts as swapped).
3. Overload: a server whose queue holds only --overload-queue lines, --overload-clients clients:
   the share of 429 answers (each with Retry-After) and that the others are still right.

Prints a table (and --json FILE); exit code 1 when a request was lost, a line lost or swapped, or
the served throughput fell under --min-ratio of offline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any


def demo_lines(count: int, seed: int) -> list[Path]:
    """`count` real handwritten lines shipped with trocr-tune (Testaments de Poilus, CC-BY 4.0)."""
    folder = Path(str(files("trocr_tune") / "resources" / "demo-lines" / "poilus" / "images"))
    paths = sorted(folder.glob("*.jpg"))
    random.Random(seed).shuffle(paths)
    return paths[:count]


def offline(model: str, args: argparse.Namespace, lines: list[Path]) -> tuple[float, dict[str, str]]:
    """Lines/s of offline decoding (warm-up excluded) and the text of each line."""
    from ..config import load_config
    from . import model_decoder
    from .settings import ServeSettings

    cfg = load_config(args.config, args.overrides)
    decode = model_decoder(model, cfg, ServeSettings(device="cpu", max_batch_size=args.max_batch_size))
    paths = [str(p) for p in lines]
    decode(paths[: args.max_batch_size])  # warm-up
    texts: dict[str, str] = {}
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(paths), args.max_batch_size):
            chunk = paths[i : i + args.max_batch_size]
            for path, prediction in zip(chunk, decode(chunk), strict=True):
                texts.setdefault(Path(path).name, prediction.text)
            done += len(chunk)
        if time.perf_counter() - start >= args.offline_seconds:
            break
    return done / (time.perf_counter() - start), texts


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    lost: int = 0  # no HTTP answer at all (connection error, timeout)
    statuses: dict[str, int] = field(default_factory=dict)
    lines_ok: int = 0
    lines_swapped: int = 0
    lines_different: int = 0
    lines_missing: int = 0
    retry_after_missing: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, int):
                setattr(self, f.name, mine + theirs)
            elif isinstance(mine, dict):
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value
            else:
                mine.extend(theirs)

    def summary(self, wall: float, exit_code: int) -> dict[str, Any]:
        """The phase's figures: lines/s, latency percentiles and every count."""
        return {
            "seconds": round(wall, 1),
            "served_lines_per_s": round(self.lines_ok / wall, 2) if wall else 0.0,
            "p50_ms": round(_percentile(self.latencies_ms, 50), 1),
            "p95_ms": round(_percentile(self.latencies_ms, 95), 1),
            "server_exit_code": exit_code,
            **{k: v for k, v in asdict(self).items() if k != "latencies_ms"},
        }

    def failures(self, phase: str) -> list[str]:
        """Requests without an answer, lines lost or swapped, 429s without Retry-After."""
        out = []
        if self.lost or self.sent != self.answered:
            out.append(f"{phase}: {self.lost} of {self.sent} requests got no answer")
        if self.lines_swapped or self.lines_missing or self.retry_after_missing:
            out.append(
                f"{phase}: {self.lines_swapped} lines swapped, {self.lines_missing} lost, "
                f"{self.retry_after_missing} 429s without Retry-After"
            )
        return out


def multipart(files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (field, file name, content) parts, and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, filename, content in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def client(url: str, lines: list[Path], texts: dict[str, str], k: int, deadline: float, seed: int) -> Tally:
    """Post k random lines per request, back to back, until the deadline; check every answer."""
    rng = random.Random(seed)
    tally = Tally()
    while time.monotonic() < deadline:
        chosen = rng.sample(lines, k)
        body, kind = multipart([("images", p.name, p.read_bytes()) for p in chosen])
        request = urllib.request.Request(url + "/v1/lines", data=body, headers={"Content-Type": kind})
        tally.sent += 1
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, payload, headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, payload, headers = error.code, error.read(), error.headers
        except OSError:
            tally.lost += 1
            continue
        tally.answered += 1
        tally.statuses[str(status)] = tally.statuses.get(str(status), 0) + 1
        if status == 429:
            tally.retry_after_missing += headers.get("Retry-After") is None
            time.sleep(float(headers.get("Retry-After") or 1) * rng.uniform(0.5, 1.5))  # honours it, jittered
            continue
        if status != 200:
            continue
        tally.latencies_ms.append((time.perf_counter() - start) * 1000)
        got = json.loads(payload)["lines"]
        if [line.get("id") for line in got] != [p.name for p in chosen]:
            tally.lines_missing += k
            continue
        others = {texts[p.name] for p in chosen}
        for p, line in zip(chosen, got, strict=True):
            if line.get("text") == texts[p.name]:
                tally.lines_ok += 1
            elif line.get("text") in others:
                tally.lines_swapped += 1
            else:
                tally.lines_different += 1
    return tally


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`trocr-tune serve` as a child process on localhost."""

    def __init__(self, args: argparse.Namespace, queue_size: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "trocr_tune", "serve", args.model]
        command += [args.config] if args.config else []
        command += [
            *args.overrides,
            "--port", str(self.port),
            "--max-batch-size", str(args.max_batch_size),
            "--max-wait-ms", str(args.max_wait_ms),
            "--queue-size", str(queue_size),
            "--max-lines-per-request", str(min(256, queue_size)),
            "--device", "cpu",
        ]  # fmt: skip
        self.log = open(args.server_log, "ab") if args.server_log else None  # noqa: SIM115
        out = self.log if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=out, stderr=out)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with code {self.process.returncode} before it was ready")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready after {timeout:.0f} s")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)  # graceful: queued work is answered first
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            if self.log is not None:
                self.log.close()


def phase(
    args: argparse.Namespace,
    lines: list[Path],
    texts: dict[str, str],
    clients: int,
    queue: int,
    seconds: float,
) -> tuple[Tally, float, int]:
    """One server, `clients` threads for `seconds`: the tally, wall seconds and the server's exit code."""
    server = ServerProcess(args, queue)
    try:
        server.wait_ready()
        client(server.url, lines, texts, args.lines_per_request, time.monotonic() + 1.5, seed=-1)  # warm-up
        deadline = time.monotonic() + seconds
        results: list[Tally] = [Tally() for _ in range(clients)]

        def run(i: int) -> None:
            results[i] = client(
                server.url, lines, texts, args.lines_per_request, deadline, seed=args.seed + i
            )

        start = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        code = server.stop()
    total = Tally()
    for r in results:
        total.add(r)
    return total, wall, code


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trocr_tune.serve.load_test", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="trocr-tune/base-htr")
    parser.add_argument("--config", default=None, help="a config whose eval.* decoding the server uses")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="eval.* overrides, as for serve")
    parser.add_argument("--lines", type=int, default=64, help="distinct real lines used")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--lines-per-request", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=50.0)
    parser.add_argument("--offline-seconds", type=float, default=10.0)
    parser.add_argument("--overload-clients", type=int, default=32)
    parser.add_argument(
        "--overload-queue", type=int, default=16, help="the overloaded server's queue (lines)"
    )
    parser.add_argument("--overload-seconds", type=float, default=15.0, help="0 skips the overload phase")
    parser.add_argument("--min-ratio", type=float, default=0.8, help="served / offline lines/s to pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--server-log", default=None, help="append the servers' output here")
    args = parser.parse_args(argv)
    if args.lines_per_request > args.lines:
        parser.error("--lines-per-request must be <= --lines")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    lines = demo_lines(args.lines, args.seed)
    offline_rate, texts = offline(args.model, args, lines)
    print(f"offline: {offline_rate:.1f} lines/s (batches of {args.max_batch_size}, warm-up excluded)")

    load, wall, code = phase(args, lines, texts, args.clients, 10 * args.max_batch_size, args.seconds)
    served_rate = load.lines_ok / wall if wall else 0.0
    report: dict[str, Any] = {
        "model": args.model,
        "lines": len(lines),
        "cpu_threads": os.cpu_count(),
        "offline_lines_per_s": round(offline_rate, 2),
        "load": {
            "clients": args.clients,
            "lines_per_request": args.lines_per_request,
            "ratio_to_offline": round(served_rate / offline_rate, 3),
            **load.summary(wall, code),
        },
    }
    failures = load.failures("load")
    if served_rate < args.min_ratio * offline_rate:
        failures.append(
            f"served {served_rate:.1f} lines/s < {args.min_ratio:.0%} of offline {offline_rate:.1f}"
        )

    if args.overload_seconds > 0:
        over, over_wall, over_code = phase(
            args, lines, texts, args.overload_clients, args.overload_queue, args.overload_seconds
        )
        report["overload"] = {
            "clients": args.overload_clients,
            "queue_lines": args.overload_queue,
            "share_429": round(over.statuses.get("429", 0) / max(1, over.answered), 3),
            **over.summary(over_wall, over_code),
        }
        failures += over.failures("overload")
    report["failures"] = failures

    load_r = report["load"]
    print(
        f"load: {args.clients} clients x {args.lines_per_request} lines, {load_r['seconds']} s: "
        f"{load_r['sent']} requests, {load_r['answered']} answered {load_r['statuses']}; "
        f"{served_rate:.1f} lines/s = {load_r['ratio_to_offline']:.2f}x offline; "
        f"p50 {load_r['p50_ms']} ms, p95 {load_r['p95_ms']} ms; lines ok {load.lines_ok}, "
        f"different {load.lines_different}, swapped {load.lines_swapped}, lost {load.lines_missing}"
    )
    if "overload" in report:
        o = report["overload"]
        print(
            f"overload: {o['clients']} clients, queue {o['queue_lines']} lines, {o['seconds']} s: "
            f"{o['sent']} requests, {o['answered']} answered {o['statuses']}, "
            f"429 share {o['share_429']:.0%}; "
            f"{o['served_lines_per_s']} lines/s; p50 {o['p50_ms']} ms, p95 {o['p95_ms']} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
