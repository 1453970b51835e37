"""A tolerant reader of XMP packets as other programs wrote them, independent of the XMP toolkit.

The toolkit that :mod:`musiq_daemon.metadata.xmp` edits with (Adobe's, inside exiv2) refuses whole packets
for faults that real files are full of: GIMP 2.8, digiKam 3/4 and Capture One 8 wrote the same property
twice ("XMP Toolkit error 203: Duplicate property or field node"), some writers leave bytes after the
packet or a byte-order mark before it. This module reads such packets with the standard library's XML
parser and its own reading of RDF, and:

* :func:`prepare` returns a packet the toolkit can parse, repaired only where the repair is provably
  lossless: a property (or struct field) that occurs twice with exactly the same value, attribute or
  element form alike, keeps its first occurrence; bytes around the packet (garbage, padding, a byte-order
  mark) are dropped; UTF-16/32 is re-encoded as UTF-8. Duplicates that disagree raise
  :class:`UnrepairableError`: which value would the owner want? musiqd does not guess.
* :func:`flatten` lists every value of a packet as (path, value) pairs keyed by namespace URI, not
  prefix, so that two serialisations of the same metadata compare equal. The writer compares the packet
  before and after a write with it: a second reader, not the one that wrote.
* :func:`property_values` reads one property from any packet, a broken one included (every occurrence),
  so that the owner's stars still count when the packet cannot be repaired.
"""

from __future__ import annotations

import codecs
import html
import re
import xml.parsers.expat
from dataclasses import dataclass, field
from typing import Final

RDF_NS: Final = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XML_NS: Final = "http://www.w3.org/XML/1998/namespace"
X_NS: Final = "adobe:ns:meta/"
XMP_NOTE_NS: Final = "http://ns.adobe.com/xmp/note/"
XMP_MM_NS: Final = "http://ns.adobe.com/xap/1.0/mm/"

# Spellings of one namespace that readers treat alike, and the XMP toolkit rewrites to the second.
_URI_ALIASES: Final = {"http://ns.microsoft.com/photo/1.0": "http://ns.microsoft.com/photo/1.0/"}
_RDF_SYNTAX: Final = frozenset(
    {"about", "ID", "nodeID", "parseType", "resource", "datatype", "bagID", "aboutEach", "aboutEachPrefix"}
)
_ARRAYS: Final = frozenset({"Bag", "Seq", "Alt"})
_START: Final = re.compile(rb"<\?xpacket\s+begin=|<x:xmpmeta[\s>]|<(?:[\w.-]+:)?xmpmeta[\s>]|<rdf:RDF[\s>]")
_END: Final = re.compile(rb"<\?xpacket\s+end=[^>]*\?>|</x:xmpmeta\s*>|</rdf:RDF\s*>")
_XML_DECL: Final = re.compile(rb"\A\s*<\?xml[^>]*\?>")


class UnrepairableError(ValueError):
    """A packet that cannot be read, or repaired, without losing or guessing something; the message says
    what, in words for the photo's owner."""


# --- a small tree with byte positions -----------------------------------------------------------------------


@dataclass
class _Node:
    uri: str
    local: str
    attrs: list[tuple[str, str, str]]  # (uri, local, value) in document order
    start: int  # byte offset of '<'
    tag_end: int = 0  # byte offset after the start tag's '>'
    end: int = 0  # byte offset after the element
    text: str = ""
    children: list[_Node] = field(default_factory=list)
    prefixes: dict[str, str] = field(default_factory=dict)  # in scope: prefix -> uri

    @property
    def name(self) -> str:
        return f"{self.uri}{self.local}"

    def attr(self, uri: str, local: str) -> str | None:
        return next((v for u, n, v in self.attrs if u == uri and n == local), None)


def _tag_end(data: bytes, start: int) -> int:
    """The offset after the '>' that closes the tag starting at ``start`` ('>' inside quotes skipped)."""
    quote = 0
    for i in range(start, len(data)):
        c = data[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3E:
            return i + 1
    return len(data)


def _parse(data: bytes) -> _Node:
    """The element tree of ``data`` (UTF-8), with byte positions; :class:`UnrepairableError` if not XML."""
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    parser.ordered_attributes = True
    parser.buffer_text = True
    stack: list[_Node] = []
    pending: dict[str, str] = {}
    scopes: list[dict[str, str]] = [{"xml": XML_NS}]
    root: list[_Node] = []

    def split(name: str) -> tuple[str, str]:
        uri, _, local = name.rpartition(" ")
        return _URI_ALIASES.get(uri, uri), local

    def start(name: str, attributes: list[str]) -> None:
        uri, local = split(name)
        attrs = [(*split(attributes[i]), attributes[i + 1]) for i in range(0, len(attributes), 2)]
        scope = {**scopes[-1], **pending}
        pending.clear()
        scopes.append(scope)
        at = parser.CurrentByteIndex
        node = _Node(uri, local, attrs, at, _tag_end(data, at), prefixes=scope)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(name: str) -> None:
        node = stack.pop()
        scopes.pop()
        at = parser.CurrentByteIndex
        node.end = _tag_end(data, at) if data.startswith(b"</", at) else node.tag_end

    def text(chunk: str) -> None:
        if stack:
            stack[-1].text += chunk

    def namespace(prefix: str | None, uri: str) -> None:
        pending[prefix or ""] = uri

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartNamespaceDeclHandler = namespace
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise UnrepairableError(
            f"its XMP is not well-formed XML ({xml.parsers.expat.errors.messages[exc.code]}, "
            f"line {exc.lineno})"
        ) from None
    if not root:
        raise UnrepairableError("its XMP holds no XML element")
    return root[0]


def _find_rdf(node: _Node) -> _Node | None:
    if node.uri == RDF_NS and node.local == "RDF":
        return node
    for child in node.children:
        found = _find_rdf(child)
        if found is not None:
            return found
    return None


# --- reading RDF --------------------------------------------------------------------------------------------


@dataclass
class _Property:
    """One occurrence of a property (or struct field): its name, flattened value and where it is written."""

    name: str
    values: list[tuple[str, str]]  # flattened, paths relative to the property
    node: _Node | None  # element form
    owner: _Node  # the element whose start tag holds the attribute form (or the element's parent)
    attr_uri: str = ""
    attr_local: str = ""


def _is_syntax(uri: str, local: str) -> bool:
    return (uri == RDF_NS and local in _RDF_SYNTAX) or uri == XML_NS or uri == ""


def _occurrences(holder: _Node) -> list[_Property]:
    """The properties (or struct fields) directly in ``holder``: attributes, then child elements."""
    out = [
        _Property(f"{uri}{local}", [("", value)], None, holder, uri, local)
        for uri, local, value in holder.attrs
        if not _is_syntax(uri, local)
    ]
    out += [_Property(child.name, _value(child), child, holder) for child in holder.children]
    return out


def _value(node: _Node) -> list[tuple[str, str]]:
    """The flattened value of a property element, paths relative to it."""
    out: list[tuple[str, str]] = []
    lang = node.attr(XML_NS, "lang")
    if lang is not None:
        out.append(("?xml:lang", lang))
    resource = node.attr(RDF_NS, "resource")
    if resource is not None:
        out.append(("", resource))
        return out
    fields = [p for p in _occurrences(node) if p.attr_uri != RDF_NS]
    if node.attr(RDF_NS, "parseType") == "Resource" or (not node.children and fields):
        out.append(("", "<struct>"))
        out += _struct(fields)
        return out
    if not node.children:
        out.append(("", node.text))
        return out
    inner = node.children[0]
    if inner.uri == RDF_NS and inner.local in _ARRAYS:
        out.append(("", f"<{inner.local}>"))
        for i, item in enumerate((c for c in inner.children if c.uri == RDF_NS and c.local == "li"), 1):
            out += [(f"[{i}]{path}", value) for path, value in _value(item)]
        return out
    if inner.uri == RDF_NS and inner.local == "Description":
        described = _occurrences(inner)
        plain = [p for p in described if p.name != f"{RDF_NS}value"]
        main = [p for p in described if p.name == f"{RDF_NS}value"]
        if main:  # a qualified value: rdf:value plus qualifiers
            out += main[0].values
            out += [(f"?{p.name}{path}", value) for p in plain for path, value in p.values]
            return out
        out.append(("", "<struct>"))
        out += _struct(plain)
        return out
    out.append(("", "<struct>"))  # element content without rdf:Description: fields directly
    out += _struct(_occurrences(node)[len(fields) :] + fields)
    return out


def _struct(fields: list[_Property]) -> list[tuple[str, str]]:
    return [(f"/{p.name}{path}", value) for p in fields for path, value in p.values]


def _top_level(data: bytes) -> list[_Property]:
    root = _parse(data)
    rdf = _find_rdf(root)
    if rdf is None:
        raise UnrepairableError("its XMP has no rdf:RDF element")
    out: list[_Property] = []
    for description in rdf.children:
        if description.uri == RDF_NS and description.local == "Description":
            out += _occurrences(description)
    return out


def _fields_of(prop: _Property) -> list[_Property]:
    """The struct fields of an element-form property, for duplicate checks one level down."""
    node = prop.node
    if node is None:
        return []
    if node.attr(RDF_NS, "parseType") == "Resource" or not node.children:
        return [p for p in _occurrences(node) if p.attr_uri != RDF_NS]
    inner = node.children[0]
    if inner.uri == RDF_NS and inner.local == "Description":
        return _occurrences(inner)
    return []


# --- public API ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A packet the XMP toolkit can parse: ``data`` (UTF-8) and what was repaired (empty when nothing)."""

    data: bytes
    repairs: tuple[str, ...]


def extract(raw: bytes) -> bytes:
    """The packet inside ``raw`` as UTF-8 bytes: bytes before and after it (garbage, NUL padding, a
    byte-order mark) dropped, UTF-16/32 re-encoded. :class:`UnrepairableError` when it is not text."""
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):  # fmt: skip
        if raw.startswith(bom):
            try:
                raw = raw.decode(codec).encode("utf-8")
            except UnicodeError:
                raise UnrepairableError("its XMP is not valid Unicode text") from None
            break
    raw = raw.removeprefix(codecs.BOM_UTF8)
    start = _START.search(raw)
    if start is None:
        raise UnrepairableError("its XMP holds no xmpmeta or rdf:RDF element")
    ends = list(_END.finditer(raw, start.start()))
    if not ends:
        raise UnrepairableError("its XMP is cut off (no end of the packet)")
    # The longest well-formed candidate: writers that shrank a packet in place left the old end markup
    # behind it ("</rdf:RDF></x:xmpmeta><?xpacket end?>" twice), and padding or garbage may follow.
    candidates = [raw[start.start() : end.end()] for end in reversed(ends)]
    body = next((c for c in candidates if _well_formed(c)), candidates[0])
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnrepairableError(
            f"its XMP is not valid UTF-8 (byte {exc.start}); the right characters are unknown"
        ) from None
    return body


def _well_formed(data: bytes) -> bool:
    parser = xml.parsers.expat.ParserCreate()
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError:
        return False
    return True


def _dropped(raw: bytes, data: bytes) -> str:
    """What :func:`extract` left out of ``raw``, in words."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "re-encoded it from UTF-16 to UTF-8"
    at = raw.find(data)
    if at < 0:
        return "dropped bytes around the packet"
    parts = []
    if raw.startswith(codecs.BOM_UTF8):
        parts.append("a byte-order mark before it")
    elif at:
        parts.append(f"{at} bytes before it")
    after = len(raw) - at - len(data)
    if after:
        nul = not raw[at + len(data) :].strip(b"\0")
        parts.append(f"{after} {'NUL ' if nul else ''}bytes after its end")
    return "dropped " + " and ".join(parts)


def prepare(raw: bytes) -> Prepared:
    """:func:`extract`, then exact duplicate properties (and struct fields) removed; see the module doc."""
    data = extract(raw)
    repairs = [] if data == raw else [_dropped(raw, data)]
    removals: list[tuple[int, int]] = []
    described: list[str] = []
    _plan_removals(data, _top_level(data), removals, described)
    if removals:
        out = bytearray(data)
        for begin, stop in sorted(removals, reverse=True):
            del out[begin:stop]
        data = bytes(out)
        repairs.append("removed exact duplicates of " + ", ".join(dict.fromkeys(described)))
        _top_level(data)  # still well-formed
    return Prepared(data, tuple(repairs))


def _plan_removals(
    data: bytes, props: list[_Property], removals: list[tuple[int, int]], described: list[str]
) -> None:
    seen: dict[str, _Property] = {}
    for prop in props:
        first = seen.get(prop.name)
        if first is None:
            seen[prop.name] = prop
            _plan_removals(data, _fields_of(prop), removals, described)
            continue
        name = _short(prop)
        if prop.values != first.values:
            raise UnrepairableError(
                f"its XMP holds {name} twice with different values ({_shown(first)} and {_shown(prop)}); "
                "which one is right is the owner's call"
            )
        removals.append(_span(data, prop))
        described.append(name)


def _span(data: bytes, prop: _Property) -> tuple[int, int]:
    """The bytes of one occurrence: its element, or its attribute in the owner's start tag."""
    if prop.node is not None:
        return prop.node.start, prop.node.end
    owner = prop.owner
    for match in _ATTRIBUTE.finditer(data[owner.start : owner.tag_end]):
        qname = match.group(1).decode()
        prefix, _, local = qname.rpartition(":")
        if local == prop.attr_local and owner.prefixes.get(prefix) == prop.attr_uri and prefix:
            return owner.start + match.start(), owner.start + match.end()
    raise UnrepairableError(
        "its XMP could not be repaired"
    )  # pragma: no cover - the parser saw the attribute


_ATTRIBUTE: Final = re.compile(rb"\s+([\w.-]+(?::[\w.-]+)?)\s*=\s*(?:\"[^\"]*\"|'[^']*')")
_XMLNS: Final = re.compile(rb"\s+xmlns:([\w.-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")


def _short(prop: _Property) -> str:
    node = prop.node or prop.owner
    uri, _, local = (prop.attr_uri, "", prop.attr_local) if prop.node is None else (node.uri, "", node.local)
    prefix = next((p for p, u in node.prefixes.items() if u == uri and p), "")
    return f"{prefix}:{local}" if prefix else local


def _shown(prop: _Property) -> str:
    text = "; ".join(v for _, v in prop.values if v and not v.startswith("<"))
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def flatten(data: bytes, *, ordered: bool = True) -> list[tuple[str, str]]:
    """Every value of the packet ``data`` as (path, value) pairs (see the module doc): sorted, or in
    document order when not ``ordered``."""
    out: list[tuple[str, str]] = []
    for prop in _top_level(extract(data)):
        out += [(f"{prop.name}{path}", value) for path, value in prop.values]
    return sorted(out) if ordered else out


def property_values(raw: bytes, name: str) -> list[str]:
    """Every simple value of the top-level property ``name`` (namespace URI + local name) in ``raw``,
    duplicates included; empty when the packet cannot be read at all."""
    try:
        props = _top_level(extract(raw))
    except UnrepairableError:
        return []
    return [value for prop in props if prop.name == name for path, value in prop.values if path == ""]


def restore_empty_arrays(new: bytes, old: bytes) -> bytes:
    """``new`` with the empty top-level arrays of ``old`` that it lacks (the XMP toolkit drops an empty
    ``rdf:Alt``), each declared with its own namespace in the first description, so nothing the owner had
    goes away."""
    have = {prop.name for prop in _top_level(extract(new))}
    missing = [
        (prop.node.uri, prop.node.local, prop.values[0][1][1:-1], _prefix_of(prop.node))
        for prop in _top_level(extract(old))
        if prop.node is not None
        and prop.name not in have
        and prop.values in ([("", "<Alt>")], [("", "<Bag>")], [("", "<Seq>")])
    ]
    rdf = _find_rdf(_parse(new)) if missing else None
    description = next((c for c in rdf.children if c.local == "Description"), None) if rdf else None
    if description is None:
        return new
    known = {uri: prefix for prefix, uri in description.prefixes.items() if prefix}
    inserted = bytearray()
    for uri, local, kind, prefix in missing:
        if uri in known:  # the toolkit wants one prefix per namespace
            inserted += f"<{known[uri]}:{local}><rdf:{kind}/></{known[uri]}:{local}>".encode()
        else:
            name = f"{prefix}:{local}"
            inserted += f'<{name} xmlns:{prefix}="{html.escape(uri)}"><rdf:{kind}/></{name}>'.encode()
    if description.end == description.tag_end:  # <rdf:Description .../>
        head = description.tag_end - 2
        return new[:head] + b">" + bytes(inserted) + b"</rdf:Description>" + new[description.tag_end :]
    close = new.rfind(b"</", description.start, description.end)
    return new[:close] + bytes(inserted) + new[close:]


def _prefix_of(node: _Node) -> str:
    return next((p for p, u in node.prefixes.items() if u == node.uri and p), "ns0")


def about(raw: bytes) -> str | None:
    """The first non-empty ``rdf:about`` of the packet's descriptions (None when all are empty)."""
    try:
        rdf = _find_rdf(_parse(extract(raw)))
    except UnrepairableError:
        return None
    for description in rdf.children if rdf is not None else []:
        value = description.attr(RDF_NS, "about")
        if value:
            return value
    return None


def merge_extended(standard: bytes, extended: bytes) -> bytes:
    """One packet with the properties of a JPEG's standard and extended XMP (the reference to the
    extension, ``xmpNote:HasExtendedXMP``, left out: the writer sets it again when it splits)."""
    std, ext = extract(standard), extract(extended)
    ext_rdf, std_rdf = _find_rdf(_parse(ext)), _find_rdf(_parse(std))
    if ext_rdf is None or std_rdf is None:
        raise UnrepairableError("its extended XMP has no rdf:RDF element")
    # Namespaces the extension declares on its rdf:RDF move to the standard packet's rdf:RDF.
    declared = bytearray()
    for match in _XMLNS.finditer(ext[ext_rdf.start : ext_rdf.tag_end]):
        prefix = match.group(1).decode()
        uri = (match.group(2) if match.group(2) is not None else match.group(3)).decode()
        known = std_rdf.prefixes.get(prefix)
        if known is None:
            declared += match.group(0)
        elif known != uri:
            raise UnrepairableError(
                f"its standard and extended XMP use the prefix {prefix} for two namespaces"
            )
    inner = ext[ext_rdf.tag_end : ext.rfind(b"</", ext_rdf.start, ext_rdf.end)]
    close = std.rfind(b"</", std_rdf.start, std_rdf.end)
    head = std_rdf.tag_end - (2 if std[std_rdf.tag_end - 2 : std_rdf.tag_end] == b"/>" else 1)
    merged = std[:head] + bytes(declared) + std[head:close] + inner + std[close:]
    removals = [_span(merged, p) for p in _top_level(merged) if p.name == f"{XMP_NOTE_NS}HasExtendedXMP"]
    out = bytearray(merged)
    for begin, stop in sorted(removals, reverse=True):
        del out[begin:stop]
    return bytes(out)
