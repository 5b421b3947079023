import stream_stats
from projector_sdk.harness import Harness


def test_counts_per_stream_and_in_total():
    run = Harness(stream_stats)
    for stream in ["order-1", "order-2", "order-1", "user-7"]:
        run.append(stream, "Anything")
    assert run.text("stream/order-1") == '{"events":2,"lastPosition":3,"lastRevision":1}'
    assert run.text("total") == '{"events":4,"streams":3,"lastPosition":4}'


def test_batch_size_does_not_change_the_view():
    whole, pieces = Harness(stream_stats), Harness(stream_stats)
    for n in range(50):
        whole.record(f"s-{n % 7}", "E", n)
        pieces.record(f"s-{n % 7}", "E", n)
    whole.catch_up()
    pieces.catch_up(3)
    assert whole.documents() == pieces.documents()
