"""At most one log line per interval for one kind of event: the runtime's
:class:`~waraft.otp.logsafe.LogThrottle`, which lives in ``waraft.otp`` so that processes can
throttle what they log too (the layers above import it from here or from there alike)."""

from __future__ import annotations

from waraft.otp.logsafe import LogThrottle

__all__ = ["LogThrottle"]
