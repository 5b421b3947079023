import random
import types

import pytest

from projector_sdk import FrameError, MapBackend, ProjectionError, Subscription, View, decode_batch, encode_event
from projector_sdk.harness import Harness
from projector_sdk.projection import Projection, apply_batch

ID = bytes([0x01, 0x93, 0xA0, 0xC4, 0x5F, 0x3E, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0x2A])


def test_frames_decode_to_the_events_they_encode():
    batch = encode_event(2**40 + 7, 3, 1_700_000_000_000_000, ID, "order-1", "Placed", '{"a":"é"}', '{"m":1}')
    batch += encode_event(8, 0, 0, ID, "x", "T", "[]")
    a, b = decode_batch(batch)
    assert (a.position, a.revision, a.recorded_at) == (2**40 + 7, 3, 1_700_000_000_000_000)
    assert a.id == "0193a0c4-5f3e-7000-8000-00000000002a"
    assert (a.stream, a.type, a.category) == ("order-1", "Placed", "order")
    assert a.data == {"a": "é"}
    assert a.metadata == {"m": 1}
    assert b.category is None and b.metadata is None and b.data == []


def test_a_malformed_batch_is_refused_not_misread():
    frame = encode_event(1, 0, 0, ID, "s", "t", "{}")
    with pytest.raises(FrameError):
        decode_batch(frame[:-1])
    with pytest.raises(FrameError):
        decode_batch(frame[:2])


def test_types_read_now_and_then_are_each_event_s_own():
    # The decoder leaves types empty until a projection reads one, then decodes them with
    # each event: whichever way an event got its type, it is that event's.
    batch = b"".join(encode_event(n + 1, n, 0, ID, f"s-{n % 3}", f"T{n}", "{}") for n in range(6))
    module = types.ModuleType("reader")
    seen = []

    def apply(view, event):
        if event.position in (3, 6):
            seen.append((event.position, event.type))
        view.put(f"{event.position}", event.position)

    module.apply = apply
    apply_batch(Projection(module), View(MapBackend()), batch)
    assert seen == [(3, "T2"), (6, "T5")]
    assert [(e.type, e.recorded_at) for e in decode_batch(batch)] == [(f"T{n}", 0) for n in range(6)]
    with pytest.raises(AttributeError):
        decode_batch(batch)[0].nonesuch


def test_subscriptions_select_by_source_and_type():
    assert Subscription.all().matches("order-1", "X") and Subscription.all().matches("x", "Y")
    orders = Subscription(categories=["order"]).of_types(["OrderPlaced"])
    assert orders.matches("order-1", "OrderPlaced")
    assert not orders.matches("order-1", "ItemAdded")
    assert not orders.matches("user-1", "OrderPlaced")
    assert not orders.matches("order", "OrderPlaced"), "no category without a dash"
    mixed = Subscription(streams=["user-1"], categories=["order"])
    assert mixed.matches("user-1", "A") and mixed.matches("order-9", "B")
    assert not mixed.matches("user-2", "A")


class Counting(MapBackend):
    calls = 0

    def get(self, key):
        self.calls += 1
        return super().get(key)

    def put(self, key, value):
        self.calls += 1
        super().put(key, value)

    def delete(self, key):
        self.calls += 1
        super().delete(key)


def test_a_key_updated_a_thousand_times_is_read_once_and_written_once():
    backend = Counting()
    view = View(backend)
    for _ in range(1000):
        view.update("c", lambda c: c.__setitem__("n", c.get("n", 0) + 1))
    view.flush()
    assert backend.documents["c"] == b'{"n":1000}'
    assert backend.calls == 2


def test_reads_see_earlier_writes_and_deletes_of_the_same_batch():
    backend = MapBackend({"a": b'{"n":1}'})
    view = View(backend)
    assert view.get("a") == {"n": 1}
    view.delete("a")
    assert view.get("a") is None and "a" not in view
    view.put_bytes("b", b'{"n":5}')
    assert view.update_existing("b", lambda c: c["n"]) == 5
    assert view.update_existing("z", lambda c: c["n"]) is None
    view.flush()
    assert "a" not in backend.documents and "z" not in backend.documents
    assert backend.documents["b"] == b'{"n":5}'


def test_documents_are_compact_utf8_json_in_insertion_order():
    backend = MapBackend()
    view = View(backend)
    view.put("k", {"z": "é\n\u0001", "a": [1, None, True]})
    view.flush()
    assert backend.documents["k"] == '{"z":"é\\n\\u0001","a":[1,null,true]}'.encode()


def test_a_document_that_is_not_json_is_reported_with_its_key():
    view = View(MapBackend({"bad": b"nope"}))
    with pytest.raises(ValueError, match="document 'bad' is not JSON"):
        view.get("bad")


def counter():
    module = types.ModuleType("counter")
    module.subscription = Subscription(categories=["order"])

    def apply(view, event):
        if event.type == "Bad":
            raise ProjectionError("no bad events")

        def count(c):
            c["events"] = c.get("events", 0) + 1
            c["random"] = random.random()

        view.update(event.stream, count)

    module.apply = apply
    return module


def test_the_harness_applies_only_subscribed_events_and_names_a_refused_one():
    run = Harness(counter())
    run.append("order-1", "OrderPlaced")
    run.append("user-1", "Registered")
    assert run.document("order-1")["events"] == 1
    assert run.document("user-1") is None
    with pytest.raises(ProjectionError, match=r"Bad event at position 3 \(stream order-1\): no bad events"):
        run.append("order-1", "Bad")
    assert run.document("order-1")["events"] == 1, "the refused batch wrote nothing"


def test_batch_size_changes_nothing_randomness_included():
    whole, pieces = Harness(counter()), Harness(counter())
    for n in range(50):
        whole.record(f"order-{n % 7}", "E", {"n": n})
        pieces.record(f"order-{n % 7}", "E", {"n": n})
    whole.catch_up()
    pieces.catch_up(3)
    assert whole.documents() == pieces.documents()
    assert whole.document("order-1")["random"] != whole.document("order-2")["random"]


def test_a_module_without_apply_is_not_a_projection():
    with pytest.raises(TypeError, match="apply"):
        Harness(types.ModuleType("empty"))


def test_a_batch_is_written_in_one_write_many_call_or_key_by_key_without_it():
    def changes_of(backend):
        view = View(backend)
        view.put("a", {"n": 1})
        view.put("ключ/%", ["é"])
        view.put_bytes("raw", b"\x01\x02")
        view.put_bytes("empty", b"")
        view.delete("old")
        view.get("untouched")
        view.flush()

    start = {"old": b"\x09", "untouched": b"1"}
    calls = []

    class Batched(MapBackend):
        def write_many(self, changes):
            calls.append(len(changes))
            super().write_many(changes)

    class Plain(MapBackend):
        write_many = None

    batched, plain = Batched(start), Plain(start)
    changes_of(batched)
    changes_of(plain)
    assert len(calls) == 1
    assert batched.documents == plain.documents
    assert sorted(batched.documents) == ["a", "empty", "raw", "untouched", "ключ/%"]
    assert batched.documents["ключ/%"] == '["é"]'.encode()
    with pytest.raises(ValueError, match="truncated"):
        MapBackend().write_many(b"\x01\x00\x00\x00")
