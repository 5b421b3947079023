"""How many events each stream has and where its last one sits, plus a total over the whole
log: the documents of the Rust ``stream-stats``, byte for byte.

- ``stream/<stream>`` -> ``{events, lastPosition, lastRevision}``
- ``total`` -> ``{events, streams, lastPosition}``
"""

from projector_sdk import Subscription

subscription = Subscription.all()


def new_stream():
    return {"events": 0, "lastPosition": 0, "lastRevision": 0}


def new_total():
    return {"events": 0, "streams": 0, "lastPosition": 0}


def apply(view, event):
    stream = view.edit("stream/" + event.stream, new_stream)
    stream["events"] += 1
    stream["lastPosition"] = event.position
    stream["lastRevision"] = event.revision
    total = view.edit("total", new_total)
    total["events"] += 1
    if stream["events"] == 1:
        total["streams"] += 1
    total["lastPosition"] = event.position
