"""Records, for every event of the ``det`` category, what a projection could read that is not
the event: randomness, clocks, and the order of iteration of dicts and sets. A view that
differs between two rebuilds of this projection is nondeterminism leaking in."""

import os
import random
import time
import uuid

from projector_sdk import Subscription

subscription = Subscription(categories=["det"])


def apply(view, event):
    words = {"pear", "apple", str(event.position), "fig", "kiwi", "plum"}
    mapping = {"b": 1, "a": 2, str(event.position % 3): 3, "z": 4}
    view.put(
        f"det/{event.position}",
        {
            "random": [random.random(), random.randint(0, 10**9)],
            "urandom": list(os.urandom(4)),
            "uuid4": str(uuid.uuid4()),
            "time": time.time(),
            "monotonic": time.monotonic(),
            "set": list(words),
            "keys": list(mapping),
            "hash": hash("projector"),
        },
    )
