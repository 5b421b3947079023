"""What a projection module provides, and the rules every run of it follows (in a component
and in the native harness alike)."""

import os
import random

from .frame import events


class ProjectionError(Exception):
    """Why a projection refused an event; the host records it, with the event, as the fault."""


class Subscription:
    """Which events a projection receives; see ``types.subscription`` in the WIT contract.

    ``Subscription(categories=["order"], event_types=["OrderPlaced"])``: an event is sent
    when its stream is in ``streams`` or its category in ``categories`` (all events when both
    are empty), and its type is in ``event_types`` (any type when empty)."""

    __slots__ = ("streams", "categories", "event_types")

    def __init__(self, streams=(), categories=(), event_types=()):
        self.streams = list(streams)
        self.categories = list(categories)
        self.event_types = list(event_types)

    @classmethod
    def all(cls):
        """Every event of the log."""
        return cls()

    def of_types(self, event_types):
        """Only events of these types, of whatever streams are selected."""
        return Subscription(self.streams, self.categories, event_types)

    def matches(self, stream, event_type):
        """Whether an event of ``stream`` with type ``event_type`` is selected."""
        dash = stream.find("-")
        category = stream[:dash] if dash > 0 else None
        by_source = (
            (not self.streams and not self.categories)
            or stream in self.streams
            or (category is not None and category in self.categories)
        )
        return by_source and (not self.event_types or event_type in self.event_types)

    def __eq__(self, other):
        return isinstance(other, Subscription) and (self.streams, self.categories, self.event_types) == (
            other.streams,
            other.categories,
            other.event_types,
        )

    def __repr__(self):
        return f"Subscription(streams={self.streams}, categories={self.categories}, event_types={self.event_types})"


class Projection:
    """A projection module checked: its ``subscription`` and its ``apply``."""

    __slots__ = ("subscription", "apply")

    def __init__(self, module):
        apply = getattr(module, "apply", None)
        if not callable(apply):
            raise TypeError(f"{getattr(module, '__name__', module)!r} needs an apply(view, event) function")
        subscription = getattr(module, "subscription", None)
        if callable(subscription):
            subscription = subscription()
        if subscription is None:
            subscription = Subscription.all()
        if not isinstance(subscription, Subscription):
            raise TypeError("subscription must be a Subscription, e.g. Subscription(categories=[\"order\"])")
        self.subscription = subscription
        self.apply = apply


def apply_batch(projection, view, batch):
    """Applies the events of ``batch`` (the host's framed bytes) to ``view`` in order, each with
    the randomness seeded from its position, and flushes the view. A failure is raised again
    as a ``ProjectionError`` naming the event; a malformed batch as a ``FrameError``."""
    apply = projection.apply
    rng = _rng
    for event in events(batch):
        rng.pending = event.position
        try:
            apply(view, event)
        except Exception as e:  # noqa: BLE001 - any failure refuses the event
            raise ProjectionError(f"{event.type} event at position {event.position} (stream {event.stream}): {describe(e)}") from e
    view.flush()


def describe(error):
    """An exception as a readable reason."""
    if isinstance(error, ProjectionError):
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# Determinism: a view must be a pure function of the events it saw, but the host may run any
# batch in a fresh instance and cut batches differently on a rebuild. So the `random` module's
# shared generator, and `os.urandom`, draw from one generator seeded from the position of the
# event being applied: the n-th draw while applying an event is the same on every replay. It is
# seeded on the event's first draw, not before every event, since seeding a Mersenne Twister
# costs more than most projections spend on an event. (The host freezes the clocks:
# `time.time()` is 0 in a component.)
class _EventRandom(random.Random):
    def __init__(self):
        super().__init__(0)
        self.pending = None

    def _reseed(self):
        super().seed(self.pending)
        self.pending = None

    def random(self):
        if self.pending is not None:
            self._reseed()
        return super().random()

    def getrandbits(self, k):
        if self.pending is not None:
            self._reseed()
        return super().getrandbits(k)

    def randbytes(self, n):
        if self.pending is not None:
            self._reseed()
        return super().randbytes(n)

    def seed(self, *args, **kwargs):
        self.pending = None
        super().seed(*args, **kwargs)


_rng = _EventRandom()


def _urandom(n):
    return _rng.randbytes(n)


def install_determinism():
    """Puts the seeded generator behind ``random``'s functions and ``os.urandom``; returns a
    function that puts the previous ones back."""
    names = [n for n in dir(random._inst) if not n.startswith("_") and callable(getattr(random, n, None))]
    previous = {n: getattr(random, n) for n in names}
    previous_inst, previous_urandom = random._inst, os.urandom
    for n in names:
        setattr(random, n, getattr(_rng, n))
    random._inst = _rng
    os.urandom = _urandom

    def undo():
        for n, f in previous.items():
            setattr(random, n, f)
        random._inst = previous_inst
        os.urandom = previous_urandom

    return undo
