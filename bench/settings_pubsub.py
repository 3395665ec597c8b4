"""mltrack's settings with the Redis pub/sub channel layer, for the fan-out
comparison in bench/suite.py (--layer pubsub).

The default layer (channels_redis.core) stores a copy of every group message per
member channel, and each daphne process pops them one Redis round trip at a time.
The pub/sub layer publishes a group message once; each daphne process subscribed
to the group receives it once and hands it to its own consumers. It keeps no
queue: a message nobody listens to is gone, which our pushes accept already (the
database is the source of truth and pages backfill).
"""

from mltrack.settings import *  # noqa: F403
from mltrack.settings import REDIS_URL

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}
