"""Form posts per client address over a sliding minute.

The login throttle (gateway/auth_throttle.py) already limits failed *logins* per address
and client; this caps the *requests* a client may make, so a script cannot keep the
argon2 pool busy with the page (every post with a current password costs one
verification, failed or not) or fill the log.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0
MAX_CLIENTS = 100_000  # beyond this many tracked clients, the oldest are forgotten


class PostLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._posts: dict[str, deque[float]] = {}

    def allow(self, client: str, limit: int) -> bool:
        """Count one post by ``client``; False when it is over ``limit`` this minute."""
        now = self._clock()
        recent = self._posts.pop(client, None) or deque()
        while recent and recent[0] <= now - WINDOW_SECONDS:
            recent.popleft()
        allowed = len(recent) < limit
        if allowed:
            recent.append(now)
        self._posts[client] = recent  # re-inserted: the dict stays in order of last use
        if len(self._posts) > MAX_CLIENTS:
            del self._posts[next(iter(self._posts))]
        return allowed
