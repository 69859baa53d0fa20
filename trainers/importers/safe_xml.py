"""Untrusted XML (a VOC annotation downloaded with a dataset) parsed with the standard library, DTDs refused.

Why not defusedxml: it would be one more dependency for one rule, and the rule is short. The risks of XML
from elsewhere all come through a document type declaration: entity expansion ("billion laughs", quadratic
blow-up) and external entities (reading local files or URLs). A VOC annotation never needs one, so expat is
driven directly and any `<!DOCTYPE`, entity declaration or external reference is refused before anything is
expanded; expat itself never fetches external resources. Files are also bounded in size before parsing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from xml.parsers import expat

# A VOC annotation is a few kilobytes; anything far larger is not one.
MAX_XML_BYTES = 4 << 20


class UnsafeXml(ValueError):
    """The document declares a DTD or entities: refused, never expanded."""


def _refuse(what: str):
    def handler(*_args: object) -> None:
        raise UnsafeXml(f"{what} refused (untrusted XML: no DTDs or entities)")

    return handler


def parse_xml(path: Path) -> ET.Element:
    """The root element of `path`; ValueError (with a short reason) for anything malformed or refused."""
    size = path.stat().st_size
    if size > MAX_XML_BYTES:
        raise ValueError(f"{size:,} bytes, more than an annotation file holds ({MAX_XML_BYTES:,})")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse("a DOCTYPE declaration")
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.UnparsedEntityDeclHandler = _refuse("an unparsed entity")
    parser.ExternalEntityRefHandler = _refuse("an external entity")
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as exc:
        raise ValueError(f"malformed XML ({exc})") from None
    return builder.close()
