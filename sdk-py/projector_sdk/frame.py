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

_HEAD = struct.Struct("<IQQ24xI")  # length, position, revision, (recorded-at, id), stream length
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FIXED = 8 + 8 + 8 + 16
# Where, in a frame, the stream's length is and where the stream starts.
_STREAM_LENGTH_AT = 4 + _FIXED
_STREAM_AT = _HEAD.size
# The smallest frame: the length, the fixed fields and four lengths.
_MIN_FRAME = 4 + _FIXED + 16


class FrameError(Exception):
    """The host and the guest disagree on the batch format."""

    def __init__(self, message):
        super().__init__(f"malformed event batch: {message}")


class Event:
    """One event of the log, as a projection receives it: ``position`` (global, from 1,
    gap-free), ``revision`` (in its stream, from 0), ``stream``, ``type``, ``recorded_at``,
    ``id``, ``category``, and ``data`` and ``metadata``, parsed on first use: a projection
    that filters on ``type`` never pays for JSON it skips.

    Only the frame decoder (:func:`events`) makes events. The fields nearly every projection
    reads are slots, filled when the event is decoded; the rest stay in the batch (``_batch``,
    from ``_at``, where the event's frame starts; the frame's bounds were checked up to its
    data's length) until asked for. ``type`` is a slot too, but left empty until read while no
    event of the batch has had its type read (see :func:`events`)."""

    __slots__ = ("position", "revision", "stream", "type", "_batch", "_at", "_data")

    def __getattr__(self, name):
        # Python calls this only for an attribute it did not find: here an empty `type`.
        if name != "type":
            raise AttributeError(f"'Event' object has no attribute {name!r}")
        global _type_read
        _type_read = True
        batch = self._batch
        p = self._type_at()
        self.type = str(batch[p + 4 : p + 4 + _U32.unpack_from(batch, p)[0]], "utf-8")
        return self.type

    @property
    def recorded_at(self):
        """Server time of the append, microseconds since the Unix epoch."""
        return _U64.unpack_from(self._batch, self._at + 20)[0]

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

    @property
    def id(self):
        """The event's id, a UUID in text form."""
        at = self._at + 28
        return str(uuid.UUID(bytes=self._batch[at : at + 16]))

    def _type_at(self):
        """Where the type's length is."""
        return self._at + _STREAM_AT + _U32.unpack_from(self._batch, self._at + _STREAM_LENGTH_AT)[0]

    def _data_and_metadata(self):
        """Where the data and the metadata are, and their lengths, checked against the frame."""
        batch = self._batch
        p = self._type_at()
        at = p + 4 + _U32.unpack_from(batch, p)[0]
        stop = self._at + 4 + _U32.unpack_from(batch, self._at)[0]
        (n,) = _U32.unpack_from(batch, at)
        if at + 4 + n + 4 > stop:
            raise FrameError("data overruns its frame")
        (m,) = _U32.unpack_from(batch, at + 4 + n)
        if at + 8 + n + m != stop:
            raise FrameError("metadata does not end its frame")
        return at + 4, n, at + 8 + n, m

    def __repr__(self):
        return f"Event(position={self.position}, stream={self.stream!r}, type={self.type!r})"


_UNPARSED = object()

# Set when a projection reads an empty `type` (see `Event.__getattr__`); `events` clears it.
_type_read = False


def events(batch):
    """The events of ``batch`` (bytes, or a buffer copied to bytes), in order, decoded one at
    a time as the caller asks for them: the per-event path of every component.

    A component runs Python in an interpreter where every call and every object costs, so
    the frame's bounds are checked and the fields nearly every projection reads (position,
    revision, stream) decoded here, once, into a bare object (no ``__init__`` call); the rest
    waits in the batch. The type costs a slice and a decode, which a projection that never
    reads it should not pay, while a lazy read (an attribute miss, then ``__getattr__``) costs
    more than decoding it: so the events' types are left empty until a projection first reads
    one, and decoded with the event after that. A projection pays at most one lazy read per
    batch either way."""
    global _type_read
    head = _HEAD.unpack_from
    u32 = _U32.unpack_from
    new = object.__new__
    stream_at = _STREAM_AT
    batch = batch if isinstance(batch, bytes) else bytes(batch)
    end = len(batch)
    at = 0
    _type_read = False
    lazy = True
    while at < end:
        if end - at < _MIN_FRAME:
            raise FrameError("truncated frame")
        length, position, revision, n = head(batch, at)
        stop = at + 4 + length
        p = at + stream_at + n
        if p + 4 > stop:
            raise FrameError("stream overruns its frame")
        type_end = p + 4 + u32(batch, p)[0]
        if type_end + 8 > stop or stop > end:
            raise FrameError("frame overruns the batch")
        event = new(Event)
        event.position = position
        event.revision = revision
        event.stream = str(batch[at + stream_at : p], "utf-8")
        event._batch = batch
        event._at = at
        event._data = _UNPARSED
        if not lazy:
            event.type = str(batch[p + 4 : type_end], "utf-8")
        yield event
        if lazy and _type_read:
            lazy = False
        at = stop


def decode_batch(batch):
    """The events of ``batch`` (bytes), in order."""
    return list(events(batch))


def encode_event(position, revision, recorded_at, id_bytes, stream, type_, data, metadata=b""):
    """One event's frame; ``data`` and ``metadata`` are JSON text or bytes."""
    fields = [f.encode() if isinstance(f, str) else bytes(f) for f in (stream, type_, data, metadata)]
    rest = _FIXED + 16 + sum(len(f) for f in fields)
    out = bytearray(struct.pack("<IQQQ16s", rest, position, revision, recorded_at, bytes(id_bytes)))
    for field in fields:
        out += _U32.pack(len(field))
        out += field
    return bytes(out)
