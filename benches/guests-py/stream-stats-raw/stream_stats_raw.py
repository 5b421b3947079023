"""`stream-stats` written against the WIT file alone, without the SDK, the way a careful author
would by hand: the frame read in place, one `get` per new key, one `write-many` per batch. The
projections bench replays it beside the SDK's `stream-stats-py` (the same documents), so that
what the SDK costs is a ratio in one run. Not an example to copy: no error names its event,
and nothing checks the frame."""

import json
import struct

from wit_world import WitWorld as _World
from wit_world.imports import types, view

_HEAD = struct.Struct("<IQQ").unpack_from  # the frame's length, position, revision
_U32 = struct.Struct("<I")


def _dumps(doc):
    return json.dumps(doc, separators=(",", ":")).encode()


class WitWorld(_World):
    def subscription(self):
        return types.Subscription(streams=[], categories=[], event_types=[])

    def apply(self, batch):
        docs = {}
        stored = view.get("total")
        total = json.loads(stored) if stored is not None else {"events": 0, "streams": 0, "lastPosition": 0}
        at, end = 0, len(batch)
        while at < end:
            length, position, revision = _HEAD(batch, at)
            (n,) = _U32.unpack_from(batch, at + 44)
            key = "stream/" + batch[at + 48 : at + 48 + n].decode()
            doc = docs.get(key)
            if doc is None:
                stored = view.get(key)
                doc = json.loads(stored) if stored is not None else {"events": 0, "lastPosition": 0, "lastRevision": 0}
                docs[key] = doc
            doc["events"] += 1
            doc["lastPosition"] = position
            doc["lastRevision"] = revision
            total["events"] += 1
            if doc["events"] == 1:
                total["streams"] += 1
            total["lastPosition"] = position
            at += 4 + length
        docs["total"] = total
        # write-many's framing: u32 n + key, u32 n + document.
        out = bytearray()
        for key, doc in docs.items():
            k, v = key.encode(), _dumps(doc)
            out += _U32.pack(len(k))
            out += k
            out += _U32.pack(len(v))
            out += v
        view.write_many(bytes(out))
