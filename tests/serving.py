"""A real uvicorn server on a free localhost port, in a thread, and a plain urllib client: shared
by the HTTP tests (test_serve.py) and the browser test (test_web.py)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from trocr_tune.decoding import Prediction
from trocr_tune.serve import load_test

ALTO_NS = "http://www.loc.gov/standards/alto/ns-v4#"
ALTO = f"""<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="{ALTO_NS}">
  <Description><MeasurementUnit>pixel</MeasurementUnit>
    <sourceImageInformation><fileName>elsewhere.png</fileName></sourceImageInformation></Description>
  <Layout><Page ID="p1" WIDTH="400" HEIGHT="200"><PrintSpace>
    <TextBlock ID="b1" HPOS="0" VPOS="0" WIDTH="400" HEIGHT="200">
      <TextLine ID="l1" HPOS="10" VPOS="10" WIDTH="200" HEIGHT="30">
        <String ID="s1" CONTENT="old" HPOS="10" VPOS="10" WIDTH="200" HEIGHT="30"/></TextLine>
      <TextLine ID="l2" HPOS="10" VPOS="60" WIDTH="150" HEIGHT="30"/>
      <TextLine ID="l3" HPOS="900" VPOS="900" WIDTH="50" HEIGHT="30"/>
    </TextBlock>
  </PrintSpace></Page></Layout>
</alto>
"""
PAGE_NS = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
PAGE = f"""<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="{PAGE_NS}" pcGtsId="d1">
  <Metadata><Creator>x</Creator><Created>2026-01-01T00:00:00</Created>
    <LastChange>2026-01-01T00:00:00</LastChange></Metadata>
  <Page imageFilename="elsewhere.png" imageWidth="400" imageHeight="200">
    <TextRegion id="r1"><Coords points="0,0 400,0 400,200 0,200"/>
      <TextLine id="l1"><Coords points="10,10 210,10 210,40 10,40"/>
        <TextEquiv><Unicode>old</Unicode></TextEquiv></TextLine>
      <TextLine id="l2"><Coords points="10,60 160,60 160,90 10,90"/></TextLine>
      <TextLine id="l3"><Coords points="900,900 950,900 950,930 900,930"/></TextLine>
    </TextRegion>
  </Page>
</PcGts>
"""


class Server:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.app = app

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 20) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while call(self.url + "/ready")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)


def call(
    url: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; non-2xx answers are returned, not raised."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def by_width(paths: Sequence[str]) -> list[Prediction]:
    """A stand-in model that reads an image as its width: every line's right answer is known."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            out.append(Prediction(str(im.width), -0.1))
    return out


def multipart(files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of (field, file name, content) parts, and its headers."""
    body, kind = load_test.multipart(files)
    return body, {"Content-Type": kind}


def page_image(path: Path) -> Path:
    im = Image.new("RGB", (400, 200), (232, 226, 212))
    draw = ImageDraw.Draw(im)
    for y, text in ((18, "first line of ink"), (68, "second line")):
        draw.text((16, y), text, fill=(30, 30, 30))
    im.save(path)
    return path


def readings(root: Any) -> dict[str, tuple[str | None, float]]:
    """line ID -> (text, confidence) of a filled ALTO or PAGE document."""
    out = {}
    for line in root.iter(f"{{{ALTO_NS}}}TextLine"):
        for s in line.iter(f"{{{ALTO_NS}}}String"):
            out[line.get("ID")] = (s.get("CONTENT"), float(s.get("WC", "nan")))
    for line in root.iter(f"{{{PAGE_NS}}}TextLine"):
        equiv = line.find(f"{{{PAGE_NS}}}TextEquiv")
        if equiv is not None:
            out[line.get("id")] = (equiv.findtext(f"{{{PAGE_NS}}}Unicode"), float(equiv.get("conf", "nan")))
    return out
