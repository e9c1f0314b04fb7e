"""`trocr-tune serve` through real HTTP on localhost: readiness, answers equal to predict's and
transcribe's, micro-batching across requests, limits, API key, metrics, graceful shutdown."""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from lxml import etree
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from trocr_tune.cli import cli
from trocr_tune.config import Config, load_config
from trocr_tune.decoding import Prediction
from trocr_tune.serve import API_KEY_ENV, ServeSettings, model_decoder
from trocr_tune.serve.app import create_app

from conftest import line_image, scanned_page
from serving import ALTO, PAGE, Server, by_width, call, multipart, page_image, readings

MODEL = "trocr-tune/base-htr"  # the shipped 0.9M-parameter base: real decoding, fast on CPU
WORDS = ["uno", "dos tres", "cuatro", "cinco seis siete", "ocho", "nueve diez", "once", "doce trece"]


def as_json(payload: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}


def post_lines(url: str, paths: Sequence[Path], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body, head = multipart([("images", p.name, p.read_bytes()) for p in paths])
    status, _, raw = call(url + "/v1/lines", body, {**head, **(headers or {})})
    return status, json.loads(raw)


def metric_samples(url: str) -> dict[str, list[Any]]:
    status, _, raw = call(url + "/metrics")
    assert status == 200
    return {f.name: f.samples for f in text_string_to_metric_families(raw.decode())}


# ------------------------------------------------------------------------------------------
# Fixtures: one model load for the module, the images, predict's answers for them


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(None, [f"data.cache_dir={tmp_path_factory.mktemp('cache')}"])


@pytest.fixture(scope="module")
def decoder(cfg: Config) -> Callable[[list[str]], Any]:
    return model_decoder(MODEL, cfg, ServeSettings(device="cpu"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("lines")
    return [line_image(root / f"w{i}.png", word) for i, word in enumerate(WORDS)]


@pytest.fixture(scope="module")
def predicted(images: list[Path]) -> dict[str, tuple[str, float]]:
    """image name -> (text, mean log-prob) as `trocr-tune predict` prints them."""
    result = CliRunner().invoke(cli, ["predict", MODEL, *map(str, images), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    return {Path(path).name: (text, float(logprob)) for path, text, logprob in rows}


def app_for(cfg: Config, decode: Callable[[list[str]], Any], **settings: Any) -> Any:
    return create_app(ServeSettings(device="cpu", **settings), cfg, lambda: decode)


def assert_like_predict(line: dict[str, Any], predicted: dict[str, tuple[str, float]]) -> None:
    text, logprob = predicted[line["id"]]
    assert line["text"] == text
    assert 0 < line["confidence"] <= 1
    assert math.log(line["confidence"]) == pytest.approx(logprob, abs=2e-4)  # predict prints 4 decimals


# ------------------------------------------------------------------------------------------


def test_ready_only_once_loaded_then_answers_equal_predict(
    cfg: Config, images: list[Path], predicted: dict[str, tuple[str, float]]
) -> None:
    loading = threading.Event()

    def load() -> Any:
        loading.wait(30)
        return model_decoder(MODEL, cfg, ServeSettings(device="cpu"))

    with Server(create_app(ServeSettings(device="cpu"), cfg, load)) as server:
        status, _, raw = call(server.url + "/ready")
        assert (status, json.loads(raw)) == (503, {"ready": False})
        assert call(server.url + "/health")[0] == 200
        status, headers, raw = call(server.url + "/v1/lines", *as_json({"images": []}))
        assert status == 503 and "error" in json.loads(raw) and headers["retry-after"]
        loading.set()
        server.wait_ready()
        assert json.loads(call(server.url + "/ready")[2]) == {"ready": True}

        status, answer = post_lines(server.url, images[:3])
        assert status == 200
        assert [line["id"] for line in answer["lines"]] == [p.name for p in images[:3]]
        for line in answer["lines"]:
            assert_like_predict(line, predicted)

        items = [{"id": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in images[3:]]
        status, _, raw = call(server.url + "/v1/lines", *as_json({"images": items}))
        assert status == 200
        lines = json.loads(raw)["lines"]
        assert [line["id"] for line in lines] == [p.name for p in images[3:]]
        for line in lines:
            assert_like_predict(line, predicted)
        assert call(server.url + "/docs")[0] == 200
        assert "/v1/lines" in json.loads(call(server.url + "/openapi.json")[2])["paths"]


def test_concurrent_requests_batched_each_gets_its_own_answer(
    cfg: Config, decoder: Any, images: list[Path], predicted: dict[str, tuple[str, float]]
) -> None:
    assert len({text for text, _ in predicted.values()}) > 1  # a swap would show
    app = app_for(cfg, decoder, max_wait_ms=200, max_batch_size=32)
    with Server(app) as server:
        server.wait_ready()
        # Every request 1 or 2 images, 24 requests from 8 clients.
        requests = [[images[i % 8]] if i % 3 else [images[i % 8], images[(i + 3) % 8]] for i in range(24)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda paths: post_lines(server.url, paths), requests))
        for paths, (status, answer) in zip(requests, answers, strict=True):
            assert status == 200
            assert [line["id"] for line in answer["lines"]] == [p.name for p in paths]
            for line in answer["lines"]:
                assert_like_predict(line, predicted)
        samples = metric_samples(server.url)
    batches = {
        s.labels.get("le"): s.value for s in samples["trocr_tune_batch_size"] if s.name.endswith("_bucket")
    }
    count = next(s.value for s in samples["trocr_tune_batch_size"] if s.name.endswith("_count"))
    assert batches["1.0"] < count  # at least one decoding call held lines of several requests
    lines_decoded = next(s.value for s in samples["trocr_tune_lines_decoded"] if s.name.endswith("_total"))
    assert lines_decoded == sum(len(r) for r in requests)
    answered = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for s in samples["trocr_tune_requests"]
        if s.name.endswith("_total")
    }
    assert answered[("/v1/lines", "200")] == 24


@contextmanager
def blocked(decoder: Any) -> Iterator[tuple[Any, threading.Event, threading.Event]]:
    """A decoder that holds its first call until `release` is set (`entered`: it is held)."""
    entered, release = threading.Event(), threading.Event()

    def decode(paths: list[str]) -> Any:
        entered.set()
        assert release.wait(30)
        return decoder(paths)

    try:
        yield decode, entered, release
    finally:
        release.set()


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_full_queue_answers_429_with_retry_after(cfg: Config, decoder: Any, images: list[Path]) -> None:
    with blocked(decoder) as (decode, entered, release):
        app = app_for(cfg, decode, queue_size=1, max_lines_per_request=1, max_wait_ms=0, retry_after_s=3)
        with Server(app) as server, ThreadPoolExecutor(2) as pool:
            server.wait_ready()
            first = pool.submit(post_lines, server.url, images[:1])
            assert entered.wait(10)  # the worker holds the first line
            second = pool.submit(post_lines, server.url, images[1:2])
            wait_for(lambda: app.state.batcher.depth() == 1)  # the second fills the queue
            body, head = multipart([("images", "x.png", images[2].read_bytes())])
            status, headers, raw = call(server.url + "/v1/lines", body, head)
            assert status == 429 and headers["retry-after"] == "3"
            assert "queue full" in json.loads(raw)["error"]
            release.set()
            assert first.result(30)[0] == 200 and second.result(30)[0] == 200
            samples = metric_samples(server.url)
    rejected = [
        s
        for s in samples["trocr_tune_requests"]
        if s.labels.get("status") == "429" and s.name.endswith("_total")
    ]
    assert rejected and rejected[0].value == 1


def test_graceful_shutdown_answers_queued_requests(
    cfg: Config, decoder: Any, images: list[Path], predicted: dict[str, tuple[str, float]]
) -> None:
    with blocked(decoder) as (decode, entered, release):
        app = app_for(cfg, decode, max_batch_size=1, max_wait_ms=0)
        server = Server(app).__enter__()
        server.wait_ready()
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(post_lines, server.url, images[:1])
            assert entered.wait(10)
            queued = [pool.submit(post_lines, server.url, [p]) for p in images[1:4]]
            wait_for(lambda: app.state.batcher.depth() == 3)
            stopping = threading.Thread(target=server.stop)
            stopping.start()  # SIGTERM's path: uvicorn stops listening, then waits for its requests
            time.sleep(0.3)
            release.set()
            stopping.join(30)
            for future in [first, *queued]:
                status, answer = future.result(30)
                assert status == 200
                assert_like_predict(answer["lines"][0], predicted)
    assert not server.thread.is_alive()
    assert app.state.batcher.depth() == 0


def test_limits_and_bad_input_are_json_errors(cfg: Config, decoder: Any, images: list[Path]) -> None:
    big = Image.new("L", (400, 300), 235)  # 120,000 pixels, a small PNG
    big_path = images[0].parent / "big.png"
    big.save(big_path)
    app = app_for(cfg, decoder, max_request_bytes=60_000, max_lines_per_request=3, max_image_pixels=100_000)
    with Server(app) as server:
        server.wait_ready()
        url = server.url + "/v1/lines"

        def error(status: int, body: bytes | Iterator[bytes], headers: dict[str, str]) -> str:
            answer = call(url, body, headers)
            assert answer[0] == status, answer
            message = json.loads(answer[2])["error"]
            assert isinstance(message, str) and message
            return message

        assert "over the limit" in error(413, *as_json({"images": [{"data": "A" * 80_000}]}))
        # Without Content-Length (chunked): stopped while the body streams in, JSON or multipart.
        chunks = [b'{"images": [{"data": "', *[b"A" * 10_000] * 8, b'"}]}']
        head = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        assert "over the limit" in error(413, iter(chunks), head)
        body, head = multipart([("images", f"{i}.png", b"B" * 20_000) for i in range(3)])
        head["Transfer-Encoding"] = "chunked"
        parts = iter([body[i : i + 8192] for i in range(0, len(body), 8192)])
        assert "over the limit" in error(413, parts, head)
        assert "4 images" in error(413, *multipart([("images", p.name, p.read_bytes()) for p in images[:4]]))
        assert "pixels" in error(413, *multipart([("images", "big.png", big_path.read_bytes())]))
        error(422, *as_json({"images": []}))
        error(422, *as_json({"pictures": []}))
        error(422, b"{not json", {"Content-Type": "application/json"})
        error(422, *multipart([("other", "a.png", images[0].read_bytes())]))
        error(415, b"hello", {"Content-Type": "text/plain"})

        good = base64.b64encode(images[0].read_bytes()).decode()
        items = [
            {"id": "text", "data": base64.b64encode(b"not an image at all").decode()},
            {"id": "good", "data": good},
            {"id": "not-base64", "data": "%%%"},
        ]
        status, _, raw = call(url, *as_json({"images": items}))
        assert status == 200
        text, ok, broken = json.loads(raw)["lines"]
        assert text == {"id": "text", "error": "unreadable or corrupt image"}
        assert ok["id"] == "good" and "text" in ok and "error" not in ok
        assert broken == {"id": "not-base64", "error": "not valid base64"}

        pages = server.url + "/v1/pages"
        status, headers, raw = call(pages, *multipart([("image", "p.png", images[0].read_bytes())]))
        # Without xml the image is a bare page for the segmenter: this line image is one line.
        assert status == 200 and (headers["x-segmented"], headers["x-lines-read"]) == ("true", "1")
        status, _, raw = call(
            pages, *multipart([("image", "p.png", images[0].read_bytes()), ("xml", "p.xml", b"<html/>")])
        )
        assert status == 422 and "not ALTO or PAGE" in json.loads(raw)["error"]
        big_page = multipart([("image", "big.png", big_path.read_bytes()), ("xml", "p.xml", ALTO.encode())])
        status, _, raw = call(pages, *big_page)
        assert status == 413 and "pixels" in json.loads(raw)["error"]
        four = ALTO.replace('HPOS="900" VPOS="900"', 'HPOS="10" VPOS="100"').replace(
            "</TextBlock>", '<TextLine ID="l4" HPOS="10" VPOS="140" WIDTH="150" HEIGHT="30"/></TextBlock>'
        )
        page = Image.new("L", (300, 200), 235)
        page_path = images[0].parent / "page.png"
        page.save(page_path)
        status, _, raw = call(
            pages, *multipart([("image", "p.png", page_path.read_bytes()), ("xml", "p.xml", four.encode())])
        )
        assert status == 413 and "4 lines" in json.loads(raw)["error"]
        assert call(server.url + "/nowhere")[0] == 404
        assert "error" in json.loads(call(server.url + "/nowhere")[2])


def test_api_key(cfg: Config, decoder: Any, images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServeSettings().api_key == "from-env"
    assert ServeSettings(api_key="given").api_key == "given"
    with Server(app_for(cfg, decoder, api_key="s3cret")) as server:
        server.wait_ready()
        status, answer = post_lines(server.url, images[:1])
        assert status == 401 and "API key" in answer["error"]
        assert post_lines(server.url, images[:1], {"X-API-Key": "wrong"})[0] == 401
        assert post_lines(server.url, images[:1], {"X-API-Key": "s3cret"})[0] == 200
        assert post_lines(server.url, images[:1], {"Authorization": "Bearer s3cret"})[0] == 200
        for open_path in ("/health", "/ready", "/metrics"):
            assert call(server.url + open_path)[0] == 200


@pytest.mark.parametrize("document", [ALTO, PAGE], ids=["alto", "page"])
def test_pages_filled_as_transcribe_fills_them(
    cfg: Config, decoder: Any, tmp_path: Path, document: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    image = page_image(folder / "page.png")
    xml = folder / "page.xml"
    xml.write_text(document.replace("elsewhere.png", "page.png"), encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        ["transcribe", MODEL, str(xml), "--out", str(tmp_path / "out"), "--device", "cpu",
         f"data.cache_dir={tmp_path / 'cache'}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = etree.parse(str(tmp_path / "out" / "page.xml")).getroot()

    with Server(app_for(cfg, decoder)) as server:
        server.wait_ready()
        # The upload's file name names another image: the one sent is used.
        body, head = multipart(
            [("image", "scan.png", image.read_bytes()), ("xml", "page.xml", document.encode())]
        )
        status, headers, raw = call(server.url + "/v1/pages", body, head)
    assert status == 200, raw
    assert headers["content-type"].startswith("application/xml")
    assert (headers["x-lines-read"], headers["x-lines-skipped"]) == ("2", "1")
    got = etree.fromstring(raw)
    want = readings(expected)
    assert set(want) == {"l1", "l2"}
    assert {k: v[0] for k, v in readings(got).items()} == {k: v[0] for k, v in want.items()}
    for key, (_, confidence) in readings(got).items():
        assert confidence == pytest.approx(want[key][1], abs=2e-4)
    ids = [e.get("ID") or e.get("id") for e in got.iter() if e.get("ID") or e.get("id")]
    assert ids == [e.get("ID") or e.get("id") for e in expected.iter() if e.get("ID") or e.get("id")]


def test_bare_page_scan_is_segmented_as_transcribe_segment_does(
    cfg: Config, decoder: Any, tmp_path: Path
) -> None:
    scanned_page(tmp_path / "in" / "letter.png")
    result = CliRunner().invoke(
        cli,
        ["transcribe", MODEL, str(tmp_path / "in"), "--segment", "--out", str(tmp_path / "out"),
         "--device", "cpu", f"data.cache_dir={tmp_path / 'cache'}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = (tmp_path / "out" / "letter.xml").read_bytes()

    with Server(app_for(cfg, decoder)) as server:
        server.wait_ready()
        body, head = multipart([("image", "letter.png", (tmp_path / "in" / "letter.png").read_bytes())])
        status, headers, raw = call(server.url + "/v1/pages", body, head)
        blank = Image.new("L", (300, 400), 220)
        blank.save(tmp_path / "blank.png")
        body, head = multipart([("image", "blank.png", (tmp_path / "blank.png").read_bytes())])
        empty_status, _, empty = call(server.url + "/v1/pages", body, head)
        # A phone photo: pixels stored sideways, an EXIF orientation that turns them for display.
        exif = Image.Exif()
        exif[0x0112] = 6
        photo = io.BytesIO()
        Image.open(tmp_path / "in" / "letter.png").rotate(90, expand=True).save(
            photo, "PNG", exif=exif.tobytes()
        )
        body, head = multipart([("image", "photo.png", photo.getvalue())])
        turned_status, turned, _ = call(server.url + "/v1/pages", body, head)
        register = io.BytesIO()
        letter = Image.open(tmp_path / "in" / "letter.png").convert("L")
        letter.save(register, "TIFF", save_all=True, append_images=[letter], compression="tiff_lzw")
        body, head = multipart([("image", "register.tif", register.getvalue())])
        several_status, _, several = call(server.url + "/v1/pages", body, head)
    assert status == 200, raw
    assert (headers["x-segmented"], headers["x-lines-read"], headers["x-lines-skipped"]) == (
        "true",
        "10",
        "0",
    )
    assert headers["x-turned-upright"] == "false"
    assert several_status == 422 and b"2 pages in one file" in several
    assert turned_status == 200 and (turned["x-turned-upright"], turned["x-lines-read"]) == ("true", "10")
    # The same lines, boxes, IDs and readings as the command writes.
    got, want = etree.fromstring(raw), etree.fromstring(expected)

    def layout(root: Any) -> list[tuple[str, dict[str, str]]]:
        return [(str(e.tag), {k: v for k, v in e.attrib.items() if k != "WC"}) for e in root.iter()]

    assert layout(got) == layout(want)
    assert len(readings(got)) == 10
    for key, (text, confidence) in readings(got).items():
        assert text and confidence == pytest.approx(readings(want)[key][1], abs=2e-4)
    assert empty_status == 422 and b"found no text line" in empty


def test_metrics_are_prometheus_text(cfg: Config, decoder: Any) -> None:
    with Server(app_for(cfg, decoder)) as server:
        server.wait_ready()
        status, headers, _ = call(server.url + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        names = set(metric_samples(server.url))
    assert {
        "trocr_tune_requests",
        "trocr_tune_request_seconds",
        "trocr_tune_lines_decoded",
        "trocr_tune_batch_size",
        "trocr_tune_decode_seconds",
        "trocr_tune_queue_depth",
        "trocr_tune_model_ready",
    } <= names


def test_decoder_failure_is_a_json_500_and_the_worker_goes_on(
    cfg: Config, decoder: Any, images: list[Path]
) -> None:
    calls = []

    def flaky(paths: list[str]) -> Any:
        calls.append(len(paths))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return decoder(paths)

    with Server(app_for(cfg, flaky, max_wait_ms=0)) as server:
        server.wait_ready()
        status, answer = post_lines(server.url, images[:1])
        assert status == 500 and "out of memory" in answer["error"]
        assert post_lines(server.url, images[:1])[0] == 200


def test_cli_serve_stops_with_one_line_when_the_model_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trocr_tune.cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SystemExit) as stopped:
        main(["serve", str(tmp_path / "missing"), "--port", str(port), "--device", "cpu"])
    assert stopped.value.code == 2
    assert "error: model failed to load:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["serve", MODEL, "data.layout=alto"])
    assert refused.value.code == 2
    assert "serve reads only eval.*" in capsys.readouterr().err


@pytest.mark.parametrize("swap", [False, True], ids=["right", "swapping"])
def test_load_test_client_tells_right_answers_from_swapped_ones(
    cfg: Config, tmp_path: Path, swap: bool
) -> None:
    from trocr_tune.serve.load_test import client

    lines = [line_image(tmp_path / f"l{i}.png", "x", size=(40 + 7 * i, 20)) for i in range(6)]
    texts = {p.name: str(40 + 7 * i) for i, p in enumerate(lines)}

    def decode(paths: list[str]) -> list[Prediction]:
        answers = by_width(paths)
        return answers[::-1] if swap else answers  # a batcher that mixed up its lines

    with Server(app_for(cfg, decode, max_wait_ms=5)) as server:
        server.wait_ready()
        tally = client(server.url, lines, texts, k=3, deadline=time.monotonic() + 1.0, seed=0)
    assert tally.sent == tally.answered > 0 and tally.lost == 0
    assert tally.statuses == {"200": tally.sent} and len(tally.latencies_ms) == tally.sent
    if swap:  # the middle line of 3 stays in place; the other two are each other's
        assert (tally.lines_ok, tally.lines_swapped) == (tally.sent, 2 * tally.sent)
    else:
        assert (tally.lines_ok, tally.lines_swapped, tally.lines_different) == (3 * tally.sent, 0, 0)
