"""The FastAPI app: endpoints, limits, API key and the model's background loading.

The model is loaded once, in a thread started at startup (`/ready` answers 503 until then); a
single Batcher worker owns it. Uploaded images are written to a private temporary folder so that
they are opened by the same code as `predict`'s files (data/images.py: bombs, truncation, modes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config
from ..data.images import ImageProblem, image_problem, open_image
from ..decoding import Prediction
from ..errors import UserError
from ..pages import NO_LINES_FOUND, confidence_of, fill_page, page_images, scan_alto
from .batching import Batcher, BatchStats, Closed, Decoder, QueueFull
from .metrics import CONTENT_TYPE, Metrics
from .settings import ServeSettings

log = logging.getLogger("trocr_tune.serve")
# The web page loads nothing from elsewhere; it shows the user's own files (blob: URLs).
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self' blob:; frame-ancestors 'none'"
)


class ApiError(Exception):
    """An answer other than 200, with its JSON body {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class _State:
    ready: bool = False
    error: str | None = None


DRAIN_FACTOR = 4  # how much of an over-limit body is read and dropped before the 413


class _BodyLimit:
    """413 for a body over the limit (from Content-Length at once, else while it streams in) and
    408 for one that does not arrive within the body timeout (a stalled or very slow client)."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _error(413, f"request body of {int(length)} bytes is over the limit of {self.limit}")(
                scope, receive, send
            )
            return
        seen, complete = 0, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # after the body: waiting for a disconnect is not an upload
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ApiError(408, f"request body not received within {self.timeout_s:g} s") from None
            seen += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > self.limit:
                if not complete:
                    await drain()
                raise ApiError(413, f"request body is over the limit of {self.limit} bytes")
            return message

        async def drain() -> None:
            """Read and drop the rest of an over-limit body (at most DRAIN_FACTOR x the limit, within
            the body timeout) before answering: a client still sending when the connection closed
            would get a reset instead of the 413 (what a web server's lingering close does)."""
            dropped = 0
            while dropped <= DRAIN_FACTOR * self.limit:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    return
                dropped += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return

        await self.app(scope, counted, send)


class _Counted:
    """Counts every answer by endpoint and status (outermost, so rejections count too)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.on_request(scope["path"], status, time.perf_counter() - start)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


LINES_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["images"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "string"},
                                    "data": {"type": "string", "format": "byte"},
                                },
                                "required": ["data"],
                            },
                        }
                    },
                    "required": ["images"],
                }
            },
        },
    }
}
PAGES_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "xml": {"type": "string", "format": "binary"},
                    },
                    "required": ["image"],
                }
            }
        },
    }
}


def create_app(
    settings: ServeSettings,
    cfg: Config,
    load: Callable[[], Decoder],
    on_load_error: Callable[[str], None] | None = None,
) -> FastAPI:
    """The service: `load()` runs once in a background thread and returns the decoder the batching
    worker calls (see `model_decoder`); tests pass their own. When it fails, /ready says why and
    `on_load_error(message)` is called (the CLI stops the server)."""
    state = _State()
    batcher = Batcher(settings.max_batch_size, settings.max_wait_ms / 1000, settings.queue_size)
    metrics = Metrics(batcher.depth, lambda: float(state.ready))
    batcher.stats = BatchStats(on_batch=metrics.on_batch)
    workdir = Path(tempfile.mkdtemp(prefix="trocr-tune-serve-"))

    def load_model() -> None:
        try:
            decoder = load()
        except Exception as exc:
            state.error = f"model failed to load: {exc}"
            log.error(state.error)
            if on_load_error is not None:
                on_load_error(state.error)
            return
        batcher.start(decoder)
        state.ready = True
        log.info("model loaded; ready")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load_model, name="trocr-tune-load", daemon=True).start()
        try:
            yield
        finally:
            # Requests still waiting are answered before the worker ends (graceful shutdown).
            await run_in_threadpool(batcher.close)
            shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPI(
        title="trocr-tune",
        summary="Handwritten text recognition with a TrOCR model: line images and ALTO/PAGE pages.",
        version="1",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.workdir = workdir  # each request's uploads live in a folder below it until answered
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client left mid-upload: nothing to answer; counted as 499 (nginx's "client closed").
        log.info("client disconnected before its request body was complete")
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:  # e.g. the decoder raised
        log.exception("request failed")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "; ".join(str(e.get("msg", e)) for e in exc.errors()))

    def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if given is None and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key (X-API-Key or Authorization: Bearer)",
                {"WWW-Authenticate": "Bearer"},
            )

    def require_ready() -> None:
        if not state.ready:
            raise ApiError(503, state.error or "the model is loading", {"Retry-After": "1"})

    def queue_full(detail: object) -> ApiError:
        return ApiError(
            429, f"queue full ({detail}); retry later", {"Retry-After": str(settings.retry_after_s)}
        )

    def refuse_when_full() -> None:
        """429 before the body is read or stored: under overload, refusals must cost next to nothing."""
        if batcher.depth() >= batcher.capacity:
            raise queue_full(f"{batcher.depth()} lines queued, room for {batcher.capacity}")

    async def decoded(paths: list[str]) -> list[Prediction]:
        try:
            future = batcher.submit(paths)
        except QueueFull as exc:
            raise queue_full(exc) from None
        except Closed as exc:
            raise ApiError(503, str(exc)) from None
        return await asyncio.wrap_future(future)

    def blocking_decode(paths: list[str]) -> list[Prediction]:
        """For code that runs in a thread (fill_page): too many lines, a full queue -> ApiError."""
        if len(paths) > settings.max_lines_per_request:
            raise ApiError(
                413, f"{len(paths)} lines on the page, over the limit of {settings.max_lines_per_request}"
            )
        try:
            return batcher.submit(paths).result()
        except QueueFull as exc:
            raise queue_full(exc) from None
        except Closed as exc:
            raise ApiError(503, str(exc)) from None

    def store_image(folder: Path, name: str, data: bytes) -> str:
        """Write one upload; its path, or ImageProblem with the reason it cannot be read."""
        path = folder / f"{uuid.uuid4().hex}.img"
        path.write_bytes(data)
        with open_image(path) as im:
            if im.width * im.height > settings.max_image_pixels:
                raise ApiError(
                    413,
                    f"{name}: {im.width}x{im.height} pixels, over the limit of {settings.max_image_pixels}",
                )
        reason = image_problem(str(path))
        if reason is not None:
            raise ImageProblem(name, reason)
        return str(path)

    def store_lines(folder: Path, items: list[tuple[str, bytes | str]]) -> list[str | ImageProblem]:
        out: list[str | ImageProblem] = []
        for name, data in items:
            if isinstance(data, str):  # an item that already failed (e.g. not base64)
                out.append(ImageProblem(name, data))
                continue
            try:
                out.append(store_image(folder, name, data))
            except ImageProblem as problem:
                out.append(ImageProblem(name, problem.reason))
        return out

    def new_folder() -> Path:
        folder = workdir / uuid.uuid4().hex
        folder.mkdir()
        return folder

    async def form(request: Request) -> Any:
        try:
            return await request.form(
                max_files=settings.max_lines_per_request + 1,
                max_fields=settings.max_lines_per_request + 8,
                max_part_size=settings.max_request_bytes,
            )
        except HTTPException as exc:  # malformed multipart, too many parts
            status = 413 if "exceed" in str(exc.detail).lower() else 422
            raise ApiError(status, f"multipart body: {exc.detail}") from None

    async def line_items(request: Request) -> list[tuple[str, bytes | str]]:
        """(id, image bytes or why it has none) of each image in the request, in order."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            uploads = (await form(request)).getlist("images")
            items: list[tuple[str, bytes | str]] = []
            for i, up in enumerate(uploads):
                if not isinstance(up, UploadFile):
                    raise ApiError(422, f"images[{i}] is a text field, not a file")
                items.append((up.filename or str(i), await up.read()))
            return items
        if kind == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise ApiError(422, "the body is not valid JSON") from None
            images = body.get("images") if isinstance(body, dict) else None
            if not isinstance(images, list):
                raise ApiError(422, 'JSON body needs "images": [{"id": ..., "data": BASE64}, ...]')
            items = []
            for i, item in enumerate(images):
                if not isinstance(item, dict) or not isinstance(item.get("data"), str):
                    raise ApiError(422, f'images[{i}] needs "data": a base64 string')
                name = str(item.get("id", i))
                try:
                    items.append((name, base64.b64decode(item["data"], validate=True)))
                except (binascii.Error, ValueError):
                    items.append((name, "not valid base64"))
            return items
        raise ApiError(415, "send multipart/form-data (field images) or application/json")

    guarded = [Depends(authorized)]
    page = (files("trocr_tune") / "resources" / "web" / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def web_page() -> HTMLResponse:
        # The page calls /v1/* with the key typed into it; it holds no data itself.
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP})

    @app.get("/health", summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="The model is loaded (503 until then)")
    async def ready() -> JSONResponse:
        body: dict[str, Any] = {"ready": state.ready}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.post(
        "/v1/lines",
        dependencies=guarded,
        summary="Transcribe line images",
        description="Multipart (several `images` files; id = file name) or JSON "
        '`{"images": [{"id": ..., "data": BASE64}]}`. Answers `{"lines": [{"id", "text", "confidence"}]}` '
        "in request order; confidence is exp(mean token log-probability), 0-1. An image that cannot "
        'be read is answered `{"id", "error"}` and the others are still read.',
        openapi_extra=LINES_BODY,
    )
    async def lines(request: Request) -> JSONResponse:
        require_ready()
        refuse_when_full()
        items = await line_items(request)
        if not items:
            raise ApiError(422, "no images in the request")
        if len(items) > settings.max_lines_per_request:
            raise ApiError(413, f"{len(items)} images, over the limit of {settings.max_lines_per_request}")
        folder = new_folder()
        try:
            stored = await run_in_threadpool(store_lines, folder, items)
            paths = [s for s in stored if isinstance(s, str)]
            predictions = iter(await decoded(paths))
            out: list[dict[str, Any]] = []
            for (name, _), result in zip(items, stored, strict=True):
                if isinstance(result, ImageProblem):
                    out.append({"id": name, "error": result.reason})
                else:
                    p = next(predictions)
                    out.append({"id": name, "text": p.text, "confidence": confidence_of(p.confidence)})
            return JSONResponse({"lines": out})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @app.post(
        "/v1/pages",
        dependencies=guarded,
        summary="Fill an ALTO or PAGE document",
        description="Multipart `image` (the page image) and `xml` (ALTO v2-v4 or PAGE 2013/2019). Answers "
        "the same document with every TextLine's text replaced, as `trocr-tune transcribe` writes it "
        "(application/xml); headers X-Lines-Read, X-Lines-Skipped and X-Lines-Untouched count the lines. "
        "Without `xml`, the built-in segmenter finds the page's lines (as `transcribe --segment`) and "
        "the answer is a new ALTO v4 document (header X-Segmented: true); a photo turned by its EXIF "
        "orientation is read upright, its coordinates those of the upright page (X-Turned-Upright: true).",
        response_class=Response,
        openapi_extra=PAGES_BODY,
    )
    async def pages(request: Request) -> Response:
        require_ready()
        refuse_when_full()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data":
            raise ApiError(415, "send multipart/form-data with the fields image and xml")
        data = await form(request)
        image, xml = data.get("image"), data.get("xml")
        if not isinstance(image, UploadFile):
            raise ApiError(422, "missing the page image (multipart file field image)")
        image_name = Path(image.filename or "page").name
        if xml is None:  # a bare scan: its lines are found first
            raw, name = b"", f"{Path(image_name).stem or 'page'}.xml"
        else:
            raw = await xml.read() if isinstance(xml, UploadFile) else str(xml).encode("utf-8")
            name = (xml.filename if isinstance(xml, UploadFile) else None) or "page.xml"
        folder = new_folder()
        turned = False
        try:
            try:
                page_image = await run_in_threadpool(store_image, folder, image_name, await image.read())
                if xml is None:
                    # A phone photo is read as it is shown: the found lines' coordinates are upright.
                    pages = await run_in_threadpool(page_images, Path(page_image), folder / "pages")
                    if len(pages) > 1:
                        raise ApiError(
                            422, f"page image: {len(pages)} pages in one file: send one page a request"
                        )
                    turned, page_image = str(pages[0]) != page_image, str(pages[0])
                    found = await run_in_threadpool(scan_alto, Path(page_image), image_name)
                    if found is None:
                        raise ApiError(422, f"nothing transcribed: {NO_LINES_FOUND}")
                    raw = found
            except ImageProblem as problem:
                raise ApiError(422, f"page image: {problem.reason}") from None
            try:
                # Found lines have no types for data.line_types to pick: every one is read.
                page_cfg = replace(cfg, data=replace(cfg.data, line_types=[])) if xml is None else cfg
                crops = folder / "crops"
                filled = await run_in_threadpool(
                    fill_page, raw, Path(page_image), page_cfg, blocking_decode, Path(name).name, crops
                )
            except UserError as exc:
                raise ApiError(422, str(exc)) from None
            if not filled.lines and filled.log.total():
                raise ApiError(422, f"nothing transcribed: {filled.log.describe()}")
            headers = {
                "X-Lines-Read": str(len(filled.lines)),
                "X-Lines-Skipped": str(filled.log.total()),
                "X-Lines-Untouched": str(filled.untouched),
                "X-Segmented": "true" if xml is None else "false",
                "X-Turned-Upright": "true" if turned else "false",
            }
            return Response(filled.xml, media_type="application/xml", headers=headers)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    app.add_middleware(_BodyLimit, limit=settings.max_request_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(_Counted, metrics=metrics)  # added last: outermost, so it counts every answer
    return app
