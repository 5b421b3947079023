"""The view as a projection sees it: JSON documents under string keys.

A batch's reads and writes go through an overlay. A document read or updated stays parsed
for the rest of the batch, and every changed key is encoded and handed to the host once, when
the batch ends: a projection that updates the same documents for thousands of events pays for
JSON and for host calls per key, not per event.
"""

import json

# What an overlay entry holds: [kind, value, changed]
_STORED = 0  # value: the stored bytes, or None for no document
_PARSED = 1  # value: the parsed document

# ``write-many``'s length of a deleted document (sdk/wit/projection.wit).
_DELETED = 0xFFFFFFFF
_DELETED_BYTES = _DELETED.to_bytes(4, "little")

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode(doc):
    """A document as the view stores it: compact JSON, UTF-8, keys in insertion order."""
    return _encode(doc).encode()


def _stored(kind, value):
    """The bytes a changed overlay entry stores, or ``None`` to delete."""
    return encode(value) if kind == _PARSED else value


class MapBackend:
    """Documents in a dict: the native harness's view."""

    def __init__(self, documents=None):
        self.documents = dict(documents or {})

    def get(self, key):
        return self.documents.get(key)

    def put(self, key, value):
        self.documents[key] = bytes(value)

    def delete(self, key):
        self.documents.pop(key, None)

    def write_many(self, changes):
        """Applies changes framed as the host's ``write-many`` takes them."""
        changes = bytes(changes)
        at = 0

        def take(n):
            nonlocal at
            if at + n > len(changes):
                raise ValueError("write-many: the changes are truncated")
            at += n
            return changes[at - n : at]

        while at < len(changes):
            key = take(int.from_bytes(take(4), "little")).decode()
            n = int.from_bytes(take(4), "little")
            if n == _DELETED:
                self.delete(key)
            else:
                self.put(key, take(n))


class View:
    """The projection's documents for one batch."""

    # `_edited`: key -> document, for the documents changed in this batch (the hot path: `edit`
    # of a key edited before is one lookup); `_overlay`: key -> [kind, value, changed] for the
    # other keys the batch touched. A key is in at most one of them.
    __slots__ = ("_backend", "_edited", "_overlay")

    def __init__(self, backend):
        self._backend = backend
        self._edited = {}
        self._overlay = {}

    def get(self, key, default=None):
        """The document under ``key``, or ``default``. The object is the view's own for this
        batch: change it through ``update``, or replace it with ``put``, so the change is
        written."""
        doc = self._edited.get(key, _MISSING)
        if doc is not _MISSING:
            return doc
        entry = self._entry(key)
        return entry[1] if _parsed(entry, key) else default

    def __contains__(self, key):
        if key in self._edited:
            return True
        entry = self._entry(key)
        return entry[0] == _PARSED or entry[1] is not None

    def put(self, key, doc):
        """Stores ``doc`` (any JSON value) under ``key``."""
        self._edited[key] = doc
        self._overlay.pop(key, None)

    def edit(self, key, default=dict):
        """The document under ``key`` (or ``default()`` when there is none) to change in place:
        it is written when the batch ends. The cheapest way to change a document (no
        callback), and what ``update`` does around its callback."""
        doc = self._edited.get(key, _MISSING)
        if doc is not _MISSING:
            return doc
        return self._edit_first(key, default)

    def _edit_first(self, key, default):
        """``edit`` of a key not edited yet in this batch."""
        entry = self._overlay.pop(key, None)
        if entry is None:
            entry = [_STORED, self._backend.get(key), False]
        doc = entry[1] if _parsed(entry, key) else default()
        self._edited[key] = doc
        return doc

    def update(self, key, change, default=dict):
        """Changes the document under ``key`` in place, starting from ``default()`` when there
        is none, and stores it. Returns what ``change`` returns."""
        return change(self.edit(key, default))

    def update_existing(self, key, change):
        """Like ``update``, but only when a document exists; ``None`` otherwise."""
        doc = self._edited.get(key, _MISSING)
        if doc is _MISSING:
            entry = self._entry(key)
            if not _parsed(entry, key):
                return None
            doc = self._edited[key] = entry[1]
            del self._overlay[key]
        return change(doc)

    def delete(self, key):
        """Removes the document under ``key``, if any."""
        self._edited.pop(key, None)
        self._overlay[key] = [_STORED, None, True]

    def get_bytes(self, key):
        """The stored bytes under ``key``, or ``None``."""
        doc = self._edited.get(key, _MISSING)
        if doc is not _MISSING:
            return encode(doc)
        entry = self._entry(key)
        return encode(entry[1]) if entry[0] == _PARSED else entry[1]

    def put_bytes(self, key, value):
        """Stores raw bytes under ``key``."""
        self._edited.pop(key, None)
        self._overlay[key] = [_STORED, bytes(value), True]

    def _changes(self):
        """The batch's changes, (key, bytes or ``None`` to delete), and forgets them."""
        changes = [(key, encode(doc)) for key, doc in self._edited.items()]
        changes.extend((key, _stored(kind, value)) for key, (kind, value, changed) in self._overlay.items() if changed)
        self._edited.clear()
        self._overlay.clear()
        return changes

    def flush(self):
        """Writes every document changed in this batch to the backend; the SDK calls it. A
        backend with ``write_many`` (the host's view since contract 0.1.1) gets them all in
        one call, framed: u32 n + key, u32 n + document (n = 0xFFFFFFFF to delete)."""
        backend = self._backend
        write_many = getattr(backend, "write_many", None)
        changes = self._changes()
        if write_many is None:
            for key, value in changes:
                if value is None:
                    backend.delete(key)
                else:
                    backend.put(key, value)
            return
        parts = []
        for key, value in changes:
            k = key.encode()
            parts.append(len(k).to_bytes(4, "little"))
            parts.append(k)
            if value is None:
                parts.append(_DELETED_BYTES)
            else:
                parts.append(len(value).to_bytes(4, "little"))
                parts.append(value)
        if parts:
            write_many(b"".join(parts))

    def _entry(self, key):
        entry = self._overlay.get(key)
        if entry is None:
            entry = self._overlay[key] = [_STORED, self._backend.get(key), False]
        return entry


_MISSING = object()


def _parsed(entry, key):
    """Parses a stored entry in place; whether it holds a document."""
    if entry[0] == _PARSED:
        return True
    if entry[1] is None:
        return False
    try:
        entry[1] = json.loads(entry[1])
    except ValueError as e:
        raise ValueError(f"document {key!r} is not JSON: {e}") from None
    entry[0] = _PARSED
    return True
