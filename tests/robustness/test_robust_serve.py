"""Issue 18, deliver 4: the service under faults, and a bounded soak test on localhost.

The decoder is a stand-in (it reads an image's width), so these tests exercise the HTTP layer,
the limits and the batching worker, not a model."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from PIL import Image

from trocr_tune.config import load_config
from trocr_tune.serve.app import create_app
from trocr_tune.serve.settings import ServeSettings

from serving import Server, by_width, call, multipart

pytest.importorskip("fastapi")


@pytest.fixture
def lines(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(6):
        path = tmp_path / f"l{i}.png"
        Image.new("L", (40 + 7 * i, 20), 235).save(path)
        paths.append(path)
    return paths


def app_for(tmp_path: Path, **settings: Any) -> Any:
    cfg = load_config(None, [f"data.cache_dir={tmp_path / 'cache'}"])
    return create_app(ServeSettings(device="cpu", **settings), cfg, lambda: by_width)


def raw(url: str, head: bytes, body: bytes = b"", close: bool = False, timeout: float = 10) -> bytes:
    """Send `head` + `body` on a plain socket; close at once (a client that leaves) or read the answer."""
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=timeout) as sock:
        sock.sendall(head + body)
        if close:
            return b""
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def worker_alive(server: Server) -> bool:
    thread = server.app.state.batcher._thread
    return thread is not None and thread.is_alive()


def test_each_fault_gets_its_status_and_a_json_error_and_the_worker_lives(
    tmp_path: Path, lines: list[Path]
) -> None:
    app = app_for(tmp_path, max_lines_per_request=4, max_image_pixels=50_000, body_timeout_s=1.0)
    with Server(app) as server:
        server.wait_ready()
        url = server.url + "/v1/lines"
        host = urlparse(server.url).netloc.encode()

        def error_of(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
            return answer[0], json.loads(answer[2])["error"]

        # Malformed multipart: a body that is not the declared parts, a header without a boundary.
        broken = b'--XYZ\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\nabc'
        status, message = error_of(call(url, broken, {"Content-Type": "multipart/form-data; boundary=XYZ"}))
        assert status == 422 and message  # the unfinished part is no image: "no images in the request"
        status, message = error_of(call(url, b"--x--", {"Content-Type": "multipart/form-data"}))
        assert status == 422 and message
        # Non-image bytes: a per-item error; the other image is still read.
        body, head = multipart(
            [("images", "junk.png", b"\x89PNG not really"), ("images", "l0.png", lines[0].read_bytes())]
        )
        status, _, raw_answer = call(url, body, head)
        junk, good = json.loads(raw_answer)["lines"]
        assert status == 200 and junk == {"id": "junk.png", "error": "unreadable or corrupt image"}
        assert good["text"] == "40"
        # A huge image and too many lines.
        huge = tmp_path / "huge.png"
        Image.new("L", (1000, 100), 235).save(huge)
        assert error_of(call(url, *multipart([("images", "huge.png", huge.read_bytes())])))[0] == 413
        five = [("images", p.name, p.read_bytes()) for p in lines[:5]]
        assert error_of(call(url, *multipart(five)))[0] == 413

        # A slow client: its body stalls after 10 of 1,000 bytes; it gets 408 after the timeout,
        # and a request sent meanwhile is answered at once.
        slow_head = (
            b"POST /v1/lines HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\nConnection: close\r\n\r\n"
        )
        slow: dict[str, Any] = {}
        started = time.monotonic()
        thread = threading.Thread(
            target=lambda: slow.update(answer=raw(server.url, slow_head, b'{"images":'))
        )
        thread.start()
        time.sleep(0.2)
        assert call(url, *multipart([("images", "l1.png", lines[1].read_bytes())]))[0] == 200
        assert time.monotonic() - started < 1.0  # answered while the slow upload was pending
        thread.join(10)
        status, message = status_and_error(slow["answer"])
        assert status == 408 and "1 s" in message
        assert time.monotonic() - started < 5

        # Clients that leave mid-upload, several times over.
        for _ in range(5):
            raw(server.url, slow_head, b'{"images": [{"da', close=True)
        time.sleep(0.3)

        # A flood beyond the queue: every request is answered 200 or 429 (with Retry-After).
        statuses: Counter[int] = Counter()
        retry = []

        def flood() -> None:
            for _ in range(10):
                answer = call(url, *multipart([(("images", p.name, p.read_bytes())) for p in lines[:4]]))
                statuses[answer[0]] += 1
                if answer[0] == 429:
                    retry.append(answer[1].get("retry-after") or answer[1].get("Retry-After"))

        app.state.batcher.capacity = 4  # room for one request at a time
        threads = [threading.Thread(target=flood) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        app.state.batcher.capacity = 256
        assert sum(statuses.values()) == 80 and set(statuses) <= {200, 429} and statuses[200] > 0
        assert all(r == "1" for r in retry)

        # After all of it: the worker lives and answers; /metrics counted the faults.
        assert worker_alive(server)
        status, _, raw_answer = call(url, *multipart([("images", "l5.png", lines[5].read_bytes())]))
        assert status == 200 and json.loads(raw_answer)["lines"][0]["text"] == "75"
        assert call(server.url + "/health")[0] == 200
        metrics = call(server.url + "/metrics")[2].decode()
        assert 'status="408"' in metrics and 'status="413"' in metrics and 'status="429"' in metrics


def _rss_mb() -> float | None:
    try:
        status = Path(f"/proc/{os.getpid()}/status").read_text()
    except OSError:
        return None
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kb / 1024


def test_soak_every_request_answered_or_refused_and_memory_flat(tmp_path: Path, lines: list[Path]) -> None:
    """Thousands of requests from 8 clients against a small queue: sent = answered + refused, every
    line comes back to its own request, no temporary file is left, and memory stays flat."""
    app = app_for(tmp_path, max_wait_ms=2, queue_size=8, max_lines_per_request=3)
    bodies = [multipart([("images", p.name, p.read_bytes()) for p in lines[i : i + 3]]) for i in range(4)]
    expected = [[str(40 + 7 * j) for j in range(i, i + 3)] for i in range(4)]
    tally: Counter[str] = Counter()
    lock = threading.Lock()

    def client(k: int, n: int) -> None:
        for i in range(n):
            which = (k + i) % 4
            try:
                status, _, answer = call(server.url + "/v1/lines", *bodies[which])
            except OSError:
                with lock:
                    tally["lost"] += 1
                continue
            with lock:
                tally["sent"] += 1
                if status == 200:
                    texts = [line["text"] for line in json.loads(answer)["lines"]]
                    tally["answered" if texts == expected[which] else "wrong"] += 1
                else:
                    tally["refused" if status == 429 else f"status {status}"] += 1

    def round_of(n: int) -> None:
        threads = [threading.Thread(target=client, args=(k, n)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)

    with Server(app) as server:
        server.wait_ready()
        round_of(60)  # warm-up: allocator pools, thread pools and caches settle
        before = _rss_mb()
        round_of(200)
        after = _rss_mb()
        assert not list(app.state.workdir.iterdir())  # every request's uploads removed
    assert tally["sent"] == 8 * 260 and tally["lost"] == 0
    assert tally["sent"] == tally["answered"] + tally["refused"], tally
    assert tally["answered"] > 0 and tally["refused"] > 0  # the queue overflowed and recovered
    if before is not None and after is not None:
        assert after - before < 25, f"RSS grew {after - before:.1f} MB over 1,600 requests"
