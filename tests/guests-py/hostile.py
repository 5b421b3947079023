"""A projection that misbehaves on demand, to show that the server isolates it. It reads the
``hostile`` category and counts events under ``count``, except for these event types:
``Loop`` spins forever; ``Bomb`` allocates memory until something stops it; ``Throw`` hits a
bug (a KeyError); ``Refuse`` refuses the event with a ProjectionError."""

from projector_sdk import ProjectionError, Subscription

subscription = Subscription(categories=["hostile"])


def apply(view, event):
    if event.type == "Loop":
        n = 0
        while True:
            n += 1
    elif event.type == "Bomb":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    elif event.type == "Throw":
        return event.data["missing"]
    elif event.type == "Refuse":
        raise ProjectionError("asked to refuse this event")

    def count(c):
        c["n"] += 1

    view.update("count", count, lambda: {"n": 0})
