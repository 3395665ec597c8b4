"""The worker's pushes: PUBLISH without waiting for replies, on the real Redis."""

import time

import redis

from sessions import events
from tests.conftest import REDIS_URL


def _subscribed() -> redis.client.PubSub:
    pubsub = redis.Redis.from_url(REDIS_URL).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events.events_channel(REDIS_URL))
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    return pubsub


def _received(pubsub: redis.client.PubSub, count: int) -> list[str]:
    texts, deadline = [], time.monotonic() + 5
    while len(texts) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message:
            texts.append(message["data"].decode())
    return texts


def test_pushes_arrive_in_order_and_redis_sends_nothing_back():
    pubsub = _subscribed()
    publisher = events._Publisher(REDIS_URL)
    for number in range(100):
        publisher.publish(f"staff\n{number}")
    assert _received(pubsub, 100) == [f"staff\n{n}" for n in range(100)]
    # CLIENT REPLY OFF: no PUBLISH answer waits unread on the connection.
    assert not publisher.poll.poll(0)


def test_a_connection_redis_closed_is_replaced_before_the_next_push():
    pubsub = _subscribed()
    publisher = events._Publisher(REDIS_URL)
    publisher.publish("staff\nbefore")
    client = redis.Redis.from_url(REDIS_URL)
    address = publisher.connection._sock.getsockname()
    client.client_kill(f"{address[0]}:{address[1]}")
    deadline = time.monotonic() + 5
    while not publisher.poll.poll(0) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the kill reaches this side of the socket
    publisher.publish("staff\nafter")
    assert _received(pubsub, 2) == ["staff\nbefore", "staff\nafter"]


def test_a_push_while_redis_is_unreachable_raises():
    publisher = events._Publisher("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        publisher.publish("staff\nlost")
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("a push to an unreachable Redis must raise")
    assert publisher.connection is None


def test_an_events_text_is_json_every_parser_takes():
    import json

    import numpy as np

    from sessions.metrics import json_text

    event = {"type": "training_progress", "metrics": {"loss": np.float64(0.25)}}
    assert json.loads(json_text(event)) == {
        "type": "training_progress",
        "metrics": {"loss": 0.25},
    }
    # NaN is not JSON: null, as the history's JSON writes it.
    assert json.loads(json_text({"metrics": {"loss": float("nan")}})) == {
        "metrics": {"loss": None}
    }
    # Beyond orjson's 64 bits: json's text.
    assert json_text({"epoch": 2**70}) == '{"epoch": 1180591620717411303424}'
