"""Write Projector projections in Python.

A projection is a module with two names: ``subscription`` (a :class:`Subscription`) and
``apply(view, event)``, which applies one event to the :class:`View`, a store of JSON
documents. ``scripts/build-projection`` turns the module into a WebAssembly component;
:mod:`projector_sdk.harness` runs the same module natively under pytest.

    from projector_sdk import Subscription

    subscription = Subscription.categories(["order"])

    def apply(view, event):
        view.update(event.stream, lambda c: c.update(events=c.get("events", 0) + 1))
"""

from .frame import Event, FrameError, decode_batch, encode_event
from .projection import ProjectionError, Subscription
from .view import MapBackend, View

__all__ = [
    "Event",
    "FrameError",
    "MapBackend",
    "ProjectionError",
    "Subscription",
    "View",
    "decode_batch",
    "encode_event",
]
