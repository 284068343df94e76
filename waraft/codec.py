"""The public face of the msgpack codec; the code lives in :mod:`waraft.services.codec`."""

from waraft.services.codec import *  # noqa: F403
from waraft.services.codec import __all__ as __all__
