"""The byte framing of an event batch (see ``apply`` in sdk/wit/projection.wit), integers
little-endian::

    u32 length of the rest | u64 position | u64 revision | u64 recorded-at | 16 bytes id |
    u32 n, stream | u32 n, type | u32 n, data (JSON) | u32 n, metadata (JSON; n = 0: none)

``encode_event`` is the host's side, used by the native harness so that its tests go through
the same decoder as the component.
"""

import json
import struct
import uuid

_HEAD = struct.Struct("<IQQQ16xI")  # length, position, revision, recorded-at, (id), stream length
_U32 = struct.Struct("<I")
_FIXED = 8 + 8 + 8 + 16


class FrameError(Exception):
    """The host and the guest disagree on the batch format."""

    def __init__(self, message):
        super().__init__(f"malformed event batch: {message}")


class Event:
    """One event of the log, as a projection receives it. ``data`` and ``metadata`` are
    parsed on first use: a projection that filters on ``type`` never pays for JSON it skips."""

    __slots__ = ("position", "revision", "recorded_at", "stream", "type", "_batch", "_at", "_data_at", "_data")

    def __init__(self, position, revision, recorded_at, stream, type_, batch, at, data_at):
        #: Global position in the log, from 1, gap-free.
        self.position = position
        #: Revision in its stream, from 0.
        self.revision = revision
        #: Server time of the append, microseconds since the Unix epoch.
        self.recorded_at = recorded_at
        self.stream = stream
        self.type = type_
        # The id, the data and the metadata stay in the batch (`at`: where the frame starts,
        # `data_at`: where the data's length prefix is, checked to be in the frame; the data's
        # and metadata's own bounds are checked when first read) until asked for.
        self._batch = batch
        self._at = at
        self._data_at = data_at
        self._data = _UNPARSED

    @property
    def category(self):
        """The stream's category: its name before the first ``-``, or ``None``."""
        dash = self.stream.find("-")
        return self.stream[:dash] if dash > 0 else None

    @property
    def data(self):
        """The payload, parsed from JSON on first use."""
        if self._data is _UNPARSED:
            try:
                self._data = json.loads(self.raw_data)
            except ValueError as e:
                raise ValueError(f"{self.type} event at position {self.position} has data that is not JSON: {e}") from None
        return self._data

    @property
    def raw_data(self):
        """The payload as JSON bytes."""
        at, n, _, _ = self._data_and_metadata()
        return self._batch[at : at + n]

    @property
    def metadata(self):
        """The metadata, parsed; ``None`` when the event has none."""
        _, _, at, n = self._data_and_metadata()
        return json.loads(self._batch[at : at + n]) if n else None

    def _data_and_metadata(self):
        """Where the data and the metadata are, and their lengths, checked against the frame."""
        batch, at = self._batch, self._data_at
        stop = self._at + 4 + _U32.unpack_from(batch, self._at)[0]
        (n,) = _U32.unpack_from(batch, at)
        if at + 4 + n + 4 > stop:
            raise FrameError("data overruns its frame")
        (m,) = _U32.unpack_from(batch, at + 4 + n)
        if at + 8 + n + m != stop:
            raise FrameError("metadata does not end its frame")
        return at + 4, n, at + 8 + n, m

    @property
    def id(self):
        """The event's id, a UUID in text form."""
        at = self._at + 28
        return str(uuid.UUID(bytes=self._batch[at : at + 16]))

    def __repr__(self):
        return f"Event(position={self.position}, stream={self.stream!r}, type={self.type!r})"


_UNPARSED = object()


def decode_batch(batch):
    """The events of ``batch`` (bytes), in order."""
    events = []
    view = batch if isinstance(batch, bytes) else bytes(batch)
    end = len(view)
    at = 0
    head = _HEAD.unpack_from
    u32 = _U32.unpack_from
    while at < end:
        if end - at < _HEAD.size:
            raise FrameError("truncated frame")
        length, position, revision, recorded_at, stream_length = head(view, at)
        stop = at + 4 + length
        if stop > end or length < _FIXED + 16:
            raise FrameError("frame longer than the batch")
        p = at + _HEAD.size
        stream = str(view[p : p + stream_length], "utf-8")
        p += stream_length
        if p + 4 > stop:
            raise FrameError("stream overruns its frame")
        (n,) = u32(view, p)
        type_ = str(view[p + 4 : p + 4 + n], "utf-8")
        p += 4 + n
        if p + 4 > stop:
            raise FrameError("type overruns its frame")
        # The data and metadata are checked when first read (`Event._data_and_metadata`).
        events.append(Event(position, revision, recorded_at, stream, type_, view, at, p))
        at = stop
    return events


def encode_event(position, revision, recorded_at, id_bytes, stream, type_, data, metadata=b""):
    """One event's frame; ``data`` and ``metadata`` are JSON text or bytes."""
    fields = [f.encode() if isinstance(f, str) else bytes(f) for f in (stream, type_, data, metadata)]
    rest = _FIXED + 16 + sum(len(f) for f in fields)
    out = bytearray(struct.pack("<IQQQ16s", rest, position, revision, recorded_at, bytes(id_bytes)))
    for field in fields:
        out += _U32.pack(len(field))
        out += field
    return bytes(out)
