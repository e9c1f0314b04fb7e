"""The registry of dataset layouts: one module per layout, each exposing one `read_*` function.

A reader has the signature ``read_x(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]``
and yields samples with their *raw* text; the common pipeline (`data.reader`) normalises text,
checks images, removes duplicate ids, assigns splits and counts every drop.
Readers are imported lazily so that validating a config does not import heavy modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..records import DropLog, LineSample

# read_x(cfg: DataConfig, root, log): cfg typed loosely, as config.py checks data.layout against
# this registry and the registry must not depend on config in turn.
Reader = Callable[[Any, Path, "DropLog"], Iterator["LineSample"]]


@dataclass(frozen=True)
class Layout:
    """A dataset layout: where its reader lives, what it reads, and an example command."""

    name: str
    function: str  # "module:function" inside this package
    summary: str
    keys: tuple[str, ...]  # data.* keys the reader uses besides layout/root
    groups: tuple[str, ...]  # meta keys usable as data.group_by
    example: str

    def reader(self) -> Reader:
        module, function = self.function.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)


# The keys every XML page layout (ALTO, PAGE) reads.
XML_PAGE_KEYS = ("xml_glob", "line_types", "crop_padding", "polygon_mask", "on_duplicate_page", "cache_dir")

_ALL = [
    Layout(
        "kaggle-names",
        "kaggle:read_kaggle_names",
        "Kaggle handwriting-recognition: written_name_{train,validation,test}_v2.csv "
        "(FILENAME, IDENTITY) + images in {split}_v2/{split}/",
        ("encoding",),
        (),
        "data.layout=kaggle-names data.root=~/kaggle/handwriting-recognition",
    ),
    Layout(
        "rodrigo",
        "rodrigo:read_rodrigo",
        "images/*.png, text/transcriptions.txt ('ID text' per line), partitions/{train,validation,test}.txt",
        ("encoding", "partition_dir"),
        ("page",),
        'data.layout=rodrigo data.root=~/Rodrigo \'data.replacements=[["_", " "], ["ç", "z"]]\'',
    ),
    Layout(
        "alto",
        "xml_pages:read_alto",
        "page images + ALTO XML (v2-v4); lines cropped by box (optional polygon mask)",
        XML_PAGE_KEYS,
        ("page", "manuscript"),
        "data.layout=alto data.root=htromance-spain data.xml_glob='**/*.chocomufin.xml' "
        "data.group_by=manuscript",
    ),
    Layout(
        "page",
        "xml_pages:read_page",
        "page images + PAGE XML (2013/2019); lines cropped by Coords (optional polygon mask)",
        XML_PAGE_KEYS,
        ("page", "manuscript"),
        "data.layout=page data.root=my-pages data.line_types=[paragraph]",
    ),
    Layout(
        "spanish-notary",
        "spanish_notary:read_spanish_notary",
        "Spanish Notary Collection: labelImg VOC boxes per page + 'Labeled Data.json' sentences, "
        "aligned by order and class label (only confident pairs kept)",
        ("crop_padding", "cache_dir"),
        ("page", "manuscript"),
        "data.layout=spanish-notary data.root=SpanishNotaryCollection/dataset",
    ),
    Layout(
        "iam",
        "iam:read_iam",
        "IAM lines.txt (id, ok/err, graylevel, components, bbox, text with | separators) + "
        "lines/a01/a01-000u/a01-000u-00.png",
        ("partition_dir",),
        ("page", "writer"),
        "data.layout=iam data.root=~/IAM data.group_by=writer",
    ),
    Layout(
        "manifest",
        "manifest:read_manifest",
        "CSV / TSV / JSONL with image path and text (optional split, id) columns; root may be the file",
        ("image_column", "text_column", "split_column", "id_column", "encoding", "allow_outside_root"),
        ("page", "manuscript", "writer"),
        "data.layout=manifest data.root=lines.jsonl",
    ),
    Layout(
        "folder",
        "folder:read_folder",
        "images with .gt.txt sidecars (kraken / calamari convention), searched recursively",
        ("encoding",),
        ("page", "manuscript"),
        "data.layout=folder data.root=lines/",
    ),
    Layout(
        "hf",
        "hf:read_hf",
        "Hugging Face datasets: save_to_disk folder, parquet file(s) or hub id (extra [hf])",
        ("image_column", "text_column", "split_column", "id_column", "hf_config", "cache_dir"),
        (),
        "data.layout=hf data.root=Teklia/IAM-line data.image_column=image data.text_column=text",
    ),
]

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in _ALL}
