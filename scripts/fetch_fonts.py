#!/usr/bin/env python3
"""Download handwriting fonts for `trocr-tune data synth --font-dir` / `data pretrain-set --font-dir`.

Synthetic lines transfer to real hands only as far as their letter shapes vary; the nine fontpkg-*
handwriting fonts trocr-tune installs are few. This fetches 115 Google Fonts handwriting
families (SIL OFL 1.1 or Apache 2.0: each licence is saved beside its font) from the npm registry's
@fontsource packages, pinned to the versions below, as one `NAME.woff` (Latin subset, regular
weight) per family, plus `fonts.json` (name -> version, file, licence). Fonts are read at build
time only; nothing of them ships in the package or in a trained model.

    python scripts/fetch_fonts.py --out fonts/
    trocr-tune data pretrain-set --font-dir fonts/ ...
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
# @fontsource family -> pinned package version (the set used for the shipped base's stage 3).
FAMILIES: dict[str, str] = {
    "alex-brush": "5.3.0",
    "allura": "5.3.0",
    "amatic-sc": "5.3.0",
    "annie-use-your-telescope": "5.3.0",
    "architects-daughter": "5.3.0",
    "bad-script": "5.3.0",
    "bilbo": "5.3.0",
    "birthstone": "5.3.0",
    "caveat": "5.3.0",
    "caveat-brush": "5.3.0",
    "cedarville-cursive": "5.3.0",
    "clicker-script": "5.3.0",
    "comforter": "5.2.8",
    "coming-soon": "5.3.0",
    "cookie": "5.3.0",
    "corinthia": "5.3.0",
    "courgette": "5.3.0",
    "covered-by-your-grace": "5.3.0",
    "crafty-girls": "5.3.0",
    "damion": "5.3.0",
    "dancing-script": "5.3.0",
    "dawning-of-a-new-day": "5.3.0",
    "delius": "5.3.0",
    "delius-swash-caps": "5.3.0",
    "dr-sugiyama": "5.3.0",
    "edu-nsw-act-foundation": "5.3.0",
    "edu-qld-beginner": "5.3.0",
    "edu-sa-beginner": "5.3.0",
    "edu-tas-beginner": "5.3.0",
    "edu-vic-wa-nt-beginner": "5.3.0",
    "engagement": "5.3.0",
    "ephesis": "5.3.0",
    "euphoria-script": "4.5.10",
    "fuzzy-bubbles": "5.3.0",
    "give-you-glory": "5.3.0",
    "gloria-hallelujah": "5.3.0",
    "gochi-hand": "5.3.0",
    "great-vibes": "5.3.0",
    "grechen-fuemen": "5.3.0",
    "handlee": "5.3.0",
    "herr-von-muellerhoff": "5.3.0",
    "homemade-apple": "5.3.0",
    "indie-flower": "5.3.0",
    "inspiration": "5.2.7",
    "italianno": "5.3.0",
    "itim": "5.3.0",
    "just-another-hand": "5.3.0",
    "just-me-again-down-here": "5.3.0",
    "kalam": "5.3.0",
    "kaushan-script": "5.3.0",
    "kristi": "5.3.0",
    "la-belle-aurore": "5.3.0",
    "league-script": "5.2.8",
    "licorice": "5.3.0",
    "loved-by-the-king": "5.3.0",
    "lovers-quarrel": "5.3.0",
    "mali": "5.3.0",
    "mansalva": "5.3.0",
    "marck-script": "5.3.0",
    "meddon": "5.3.0",
    "miss-fajardose": "5.3.0",
    "monsieur-la-doulaise": "5.3.0",
    "mr-de-haviland": "5.3.0",
    "mrs-saint-delafield": "5.3.0",
    "ms-madi": "5.3.0",
    "nanum-brush-script": "5.3.0",
    "nanum-pen-script": "5.3.0",
    "neucha": "5.3.0",
    "niconne": "5.3.0",
    "norican": "5.3.0",
    "nothing-you-could-do": "5.3.0",
    "oooh-baby": "5.3.0",
    "over-the-rainbow": "5.3.0",
    "parisienne": "5.3.0",
    "patrick-hand": "5.3.0",
    "permanent-marker": "5.3.0",
    "petit-formal-script": "5.3.0",
    "pinyon-script": "5.3.0",
    "playwrite-ar": "5.3.0",
    "playwrite-ca": "5.3.0",
    "playwrite-cu": "5.3.0",
    "playwrite-de-grund": "5.3.0",
    "playwrite-es": "5.3.0",
    "playwrite-fr-moderne": "5.3.0",
    "playwrite-it-moderna": "5.3.0",
    "playwrite-nl": "5.3.0",
    "playwrite-pt": "5.3.0",
    "playwrite-us-trad": "5.3.0",
    "puppies-play": "5.3.0",
    "qwigley": "5.2.8",
    "reenie-beanie": "5.3.0",
    "rock-salt": "5.3.0",
    "rouge-script": "5.3.0",
    "ruthie": "5.3.0",
    "sacramento": "5.3.0",
    "satisfy": "5.3.0",
    "schoolbell": "5.3.0",
    "send-flowers": "5.3.0",
    "shadows-into-light": "5.3.0",
    "shadows-into-light-two": "5.3.0",
    "short-stack": "5.3.0",
    "square-peg": "5.3.0",
    "sriracha": "5.3.0",
    "sue-ellen-francisco": "5.3.0",
    "swanky-and-moo-moo": "5.3.0",
    "tangerine": "5.3.0",
    "the-girl-next-door": "5.3.0",
    "updock": "5.3.0",
    "vibur": "5.3.0",
    "waiting-for-the-sunrise": "5.3.0",
    "walter-turncoat": "5.3.0",
    "whisper": "5.3.0",
    "windsong": "5.3.0",
    "yellowtail": "5.3.0",
    "zeyada": "5.3.0",
}


def extract(name: str, tarball: bytes, out: Path) -> dict[str, str]:
    """Write NAME.woff (Latin, 400, normal) and NAME.LICENSE from an @fontsource tarball."""
    wanted = f"{name}-latin-400-normal.woff"
    found: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        for member in archive.getmembers():
            base = member.name.rsplit("/", 1)[-1]
            if base == wanted:
                key, target = "file", f"{name}.woff"
            elif base.upper().startswith("LICENSE"):
                key, target = "licence", f"{name}.LICENSE"
            else:
                continue
            data = archive.extractfile(member) if member.isfile() else None
            if data is not None:
                (out / target).write_bytes(data.read())
                found[key] = target
    if "file" not in found:
        raise ValueError(f"{name}: the package has no {wanted}")
    return found


def fetch(name: str, version: str, out: Path) -> dict[str, str]:
    url = f"{REGISTRY}/@fontsource/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        return {"version": version, **extract(name, response.read(), out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the fonts into")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    written: dict[str, dict[str, str]] = {}

    def one(item: tuple[str, str]) -> None:
        try:
            written[item[0]] = fetch(*item, args.out)
        except (OSError, ValueError, tarfile.TarError) as exc:
            failed.append(f"{item[0]}@{item[1]}: {exc}")

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(one, sorted(FAMILIES.items())))
    (args.out / "fonts.json").write_text(
        json.dumps(dict(sorted(written.items())), indent=1) + "\n", encoding="utf-8"
    )
    print(f"{len(written)} of {len(FAMILIES)} fonts in {args.out}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
