"""scripts/fetch_fonts.py against a local registry: pinned tarballs in, a --font-dir folder out."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trocr_tune.data.synth import available_fonts, font_dir_fonts

ROOT = Path(__file__).resolve().parents[1]
FONTS = available_fonts()


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fetch_fonts", ROOT / "scripts" / "fetch_fonts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.skipif(not FONTS, reason="needs a fontpkg-* font installed")
def test_fetches_pinned_fonts_from_a_registry_into_a_font_dir(tmp_path: Path) -> None:
    script = load_script()
    font = next(iter(FONTS.values())).read_bytes()
    registry = tmp_path / "registry"
    for name in ("hand-a", "hand-b"):
        folder = registry / "@fontsource" / name / "-"
        folder.mkdir(parents=True)
        members = {
            f"package/files/{name}-latin-400-normal.woff": font,
            f"package/files/{name}-latin-700-normal.woff": b"bold: not wanted",
            "package/LICENSE": b"SIL Open Font License 1.1",
        }
        (folder / f"{name}-1.2.3.tgz").write_bytes(tarball(members))
    # hand-c's package lacks the regular Latin file: counted as a failure, the others still land.
    (registry / "@fontsource" / "hand-c" / "-").mkdir(parents=True)
    (registry / "@fontsource" / "hand-c" / "-" / "hand-c-1.0.0.tgz").write_bytes(
        tarball({"package/LICENSE": b"OFL"})
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(registry)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        script.REGISTRY = f"http://127.0.0.1:{server.server_port}"
        script.FAMILIES = {"hand-a": "1.2.3", "hand-b": "1.2.3", "hand-c": "1.0.0", "hand-d": "9.9.9"}
        out = tmp_path / "fonts"
        assert script.main(["--out", str(out), "--workers", "2"]) == 1  # hand-c and hand-d failed
    finally:
        server.shutdown()
    index = json.loads((out / "fonts.json").read_text(encoding="utf-8"))
    assert index == {
        name: {"version": "1.2.3", "file": f"{name}.woff", "licence": f"{name}.LICENSE"}
        for name in ("hand-a", "hand-b")
    }
    assert (out / "hand-a.woff").read_bytes() == font
    assert (out / "hand-a.LICENSE").read_text(encoding="utf-8") == "SIL Open Font License 1.1"
    assert set(font_dir_fonts(out)) == {"hand-a", "hand-b"}  # ready for --font-dir


def test_every_family_is_pinned_to_a_version() -> None:
    script = load_script()
    assert len(script.FAMILIES) >= 100
    assert all(v.count(".") == 2 for v in script.FAMILIES.values())
