"""The component side: turns a projection module into the world's exports. The build
generates the component's entry module, which does::

    import wit_world
    from projector_sdk.guest import component
    import your_projection

    WitWorld = component(your_projection)

Only imported inside a component (it needs the bindings componentize-py generates)."""

from componentize_py_types import Err
from wit_world import WitWorld as _World
from wit_world.imports import types, view as host

from .projection import Projection, apply_batch, describe, install_determinism
from .view import View


def component(module):
    """The class implementing the world's exports for a projection module."""
    projection = Projection(module)
    install_determinism()
    s = projection.subscription
    subscription = types.Subscription(streams=s.streams, categories=s.categories, event_types=s.event_types)

    class Component(_World):
        def subscription(self):
            return subscription

        def apply(self, batch):
            try:
                apply_batch(projection, View(host), batch)
            except Exception as e:  # noqa: BLE001 - any failure is the batch's err
                raise Err(describe(e)) from None

    return Component
