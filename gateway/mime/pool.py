"""Where the parse runs: never a big one on the event loop.

Small in-memory messages without documents or archives (under 64 KiB: ~0.2 ms of
parsing) are parsed inline: a thread would cost more than the parse, and a CPU-bound
thread beside the loop makes it wait for the GIL. Everything else goes to a pool of
worker processes, so the CPU-heavy part (base64 of a 28 MB message, unzipping, PDF
text) uses the second core and can be killed. A worker that dies, or outlives
``limits.seconds``, costs a problem for the message that caused it, never a hung
session: the pool is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from gateway.mime.model import Inspection, InspectionLimits, Scan
from gateway.mime.parse import inspect_body, inspect_light
from gateway.spool import Body

THREAD_BELOW = 64 * 1024  # in-memory bodies smaller than this are tried inline first
GRACE = 5.0  # seconds past limits.seconds before a worker is killed


def _problem(reason: str) -> Inspection:
    return Inspection((), (), 0, (f"cannot inspect message: {reason}",))


def _work(
    prefix: bytes,
    data: bytes | None,
    path: str | None,
    limits: InspectionLimits,
    scans: tuple[Scan, ...] = (),
) -> Inspection:
    """Runs in a worker: bound its address space first, so a runaway allocation is a
    MemoryError (a problem) rather than the kernel's OOM killer choosing a victim. The
    filters' scans run here too, so long texts never cross back to the gateway."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = limits.worker_memory or hard  # set every time: a worker serves many limits
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    size = len(prefix) + (len(data) if data is not None else _file_size(path))
    _mmap_threshold(MMAP_BIG if size >= BIG_BODY else MMAP_SMALL)
    return inspect_body(prefix, data, path, limits, scans)


# glibc's malloc serves blocks past its mmap threshold with mmap. Left alone, the
# threshold rises to the largest block freed (up to 32 MiB): after one big message the
# next one's strings come from the heap, whose holes then hold a third copy of a 28 MB
# message at the peak (3.0x its size instead of 2.0x). Kept low for every message, each
# multi-megabyte string of a 1 MiB .docx costs fresh pages (~7 ms a message). So: low
# for big bodies (their parser pieces, CHUNK in parse.py, are past it and leave no
# holes), high for the rest.
BIG_BODY = 4 * 1024 * 1024
MMAP_BIG = 128 * 1024  # glibc's initial threshold
MMAP_SMALL = 32 * 1024 * 1024  # the highest it would rise to by itself
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def _file_size(path: str | None) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0  # inspect_body says why it cannot read it


def _mmap_threshold(value: int) -> None:
    """Set glibc's mmap threshold (which also stops it moving); elsewhere nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, value)


def _peak_rss() -> int:
    """Peak resident set of this worker, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group; serve decides how workers end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Inspector:
    """Inspects message bodies off the loop; one per running gateway."""

    def __init__(
        self,
        limits: InspectionLimits | None = None,
        *,
        workers: int = 2,
        thread_below: int = THREAD_BELOW,
        grace: float = GRACE,
    ) -> None:
        self.limits = limits or InspectionLimits()
        self._workers = workers
        self._thread_below = thread_below
        self._grace = grace
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that already imported the parser and its libraries.
        self._context.set_forkserver_preload(["gateway.mime.parse"])

    async def inspect(
        self,
        body: Body,
        limits: InspectionLimits | None = None,
        scans: tuple[Scan, ...] = (),
    ) -> Inspection:
        """The one inspection of ``body``; never raises (but can be cancelled). ``scans``
        run in the worker; an inline inspection (small mail) leaves them to the filters."""
        limits = limits or self.limits
        if self._closed:
            return _problem("the inspector is closed")
        if body.in_memory and body.size < self._thread_below:
            # Inline, on the loop: a few kilobytes parse in ~0.2 ms, and handing them to
            # a thread cost far more than that. A CPU-bound thread beside the loop holds
            # the GIL for up to its 5 ms switch interval every time the loop wants it
            # back: on 5 KB mail that cut throughput to a third.
            light = inspect_light(body.read(), limits)
            if light is not None:
                return light
        if body.in_memory:
            args = (b"", body.read(), None)
        else:
            assert body.path is not None
            args = (body.prefix, None, str(body.path))
        for attempt in (1, 2):
            pool = self._current_pool()
            try:
                future = pool.submit(_work, *args, limits, scans)
            except BrokenProcessPool:
                self._replace(pool)
                continue
            except RuntimeError:  # shut down meanwhile
                return _problem("the inspector is closed")
            try:
                return await asyncio.wait_for(
                    asyncio.wrap_future(future), timeout=limits.seconds + self._grace
                )
            except TimeoutError:
                self._replace(pool)  # the only way to stop a running worker
                return _problem(f"inspection takes longer than {limits.seconds:g} s")
            except BrokenProcessPool:
                if self._closed:
                    return _problem("the inspector is closed")
                # A worker died: this message's, or another one's on the same pool.
                # One retry on a fresh pool tells the two apart.
                self._replace(pool)
                if attempt == 2:
                    break
            except MemoryError:
                return _problem("out of memory")
            except Exception as exc:  # unpicklable result or the like: refuse, say why
                return _problem(f"{type(exc).__name__}: {exc}")
        return _problem("the inspection worker died")

    async def worker_peak_rss(self) -> int:
        """The peak resident set (bytes) of a worker that answers; with ``workers=1``,
        of the only one. For tests and status pages."""
        future = self._current_pool().submit(_peak_rss)
        return await asyncio.wrap_future(future)

    def worker_pids(self) -> list[int]:
        pool = self._pool
        if pool is None:
            return []
        # ProcessPoolExecutor has no public list of its processes before Python 3.14.
        return list(getattr(pool, "_processes", None) or {})

    def close(self) -> None:
        """Stop the workers now; inspections still waiting get a problem."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            self._terminate(pool)

    def _current_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=self._context,
                initializer=_ignore_sigint,
            )
        return self._pool

    def _replace(self, pool: ProcessPoolExecutor) -> None:
        """Drop ``pool`` (once, however many callers saw it break) and kill its workers."""
        if self._pool is pool:
            self._pool = None
        self._terminate(pool)

    @staticmethod
    def _terminate(pool: ProcessPoolExecutor) -> None:
        processes = dict(getattr(pool, "_processes", None) or {})
        for pid in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        pool.shutdown(wait=False, cancel_futures=True)
