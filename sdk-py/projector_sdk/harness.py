"""Runs a projection natively, against an in-memory view: the way to test a projection's
logic with pytest, no wasm involved. Events are numbered as the log numbers them (positions
from 1, revisions from 0 per stream), framed and decoded as in a component, and only those
the subscription selects are applied, in batches of any size."""

import json

from .frame import encode_event
from .projection import Projection, apply_batch, install_determinism
from .view import MapBackend, View


class Harness:
    """A projection module under test, with its log and its view."""

    def __init__(self, module):
        self.projection = Projection(module)
        self.backend = MapBackend()
        self.log = []
        self._revisions = {}
        self._applied = 0

    def record(self, stream, type_, data=None, metadata=None):
        """Records an event without applying it; returns its position."""
        revision = self._revisions.get(stream, 0)
        self._revisions[stream] = revision + 1
        position = len(self.log) + 1
        self.log.append(
            dict(
                position=position,
                revision=revision,
                recorded_at=position,
                id_bytes=position.to_bytes(16, "big"),
                stream=stream,
                type_=type_,
                data=json.dumps({} if data is None else data),
                metadata=b"" if metadata is None else json.dumps(metadata),
            )
        )
        return position

    def append(self, stream, type_, data=None, metadata=None):
        """Records an event and applies it; raises if the projection refuses it."""
        position = self.record(stream, type_, data, metadata)
        self.catch_up()
        return position

    def catch_up(self, batch=None):
        """Applies every recorded event not applied yet, in batches of ``batch`` events of the
        log (events the subscription skips count toward a batch, as on the server). A refused
        batch keeps none of its writes."""
        subscription = self.projection.subscription
        size = len(self.log) if batch is None else max(1, batch)
        while self._applied < len(self.log):
            end = min(len(self.log), self._applied + max(1, size))
            frames = b"".join(
                encode_event(**e) for e in self.log[self._applied : end] if subscription.matches(e["stream"], e["type_"])
            )
            scratch = MapBackend(self.backend.documents)
            undo = install_determinism()
            try:
                apply_batch(self.projection, View(scratch), frames)
            finally:
                undo()
            self.backend = scratch
            self._applied = end

    def document(self, key):
        """The document under ``key``, parsed, or ``None``."""
        raw = self.backend.get(key)
        return None if raw is None else json.loads(raw)

    def text(self, key):
        """The stored text of the document under ``key``, or ``None``."""
        raw = self.backend.get(key)
        return None if raw is None else raw.decode()

    def documents(self):
        """Every document as text, by key, in the server's key order (UTF-8 bytes)."""
        return {k: self.text(k) for k in sorted(self.backend.documents, key=str.encode)}
