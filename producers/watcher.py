"""FolderWatcher: tells when a file in the inbox is completely written.

watchdog reports changes as they happen; a file is ready once its size and
mtime have not moved for `stable_seconds`. A periodic rescan backs up the
events (they can be missed, and the folder itself can be deleted and made
again), and picks up files already there at start-up.

Entries are looked at, never through: a symbolic link or a named pipe is
reported like a file (by its own size and mtime, not its target's) so the
ingestor can refuse it and say why, rather than have it sit unexplained.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

__all__ = ["FolderWatcher", "is_candidate"]

log = logging.getLogger(__name__)

IGNORED_PATTERNS = (
    "*.tmp",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.swp",
    "*~",
    "*.error.txt",
    "*.truth.json",
)
RESCAN_SECONDS = 2.0
POLL_SECONDS = 0.1


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        status = folder.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def is_candidate(path: Path) -> bool:
    """Temporary and hidden names are work in progress, never input."""
    name = path.name
    return not name.startswith(".") and not any(
        fnmatch.fnmatch(name, pattern) for pattern in IGNORED_PATTERNS
    )


class _Forward(FileSystemEventHandler):
    """Files that changed, and the inbox itself when it is deleted or moved away: a
    folder made again under its name (often with the same inode) is watched anew."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Path], inbox: Path
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        source = Path(os.fsdecode(event.src_path))
        if event.is_directory:
            if source == self._inbox and event.event_type in ("deleted", "moved"):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, source)
            return
        target = getattr(event, "dest_path", "") or event.src_path
        path = Path(os.fsdecode(target))
        self._loop.call_soon_threadsafe(self._queue.put_nowait, path)


class FolderWatcher:
    """Yields paths of inbox files that are complete; each path once until `release`d."""

    def __init__(self, inbox: Path, stable_seconds: float) -> None:
        self.inbox = inbox
        self._stable_seconds = stable_seconds
        self._events: asyncio.Queue[Path] = asyncio.Queue()
        self._pending: dict[Path, tuple[int, int, float]] = {}
        self._claimed: set[Path] = set()
        self._observer: BaseObserver | None = None
        self._watched: tuple[int, int] | None = None
        """(device, inode) of the folder the observer watches: a recreated inbox is new."""

    def release(self, path: Path) -> None:
        """The file has left the inbox (or must be looked at again)."""
        self._claimed.discard(path)

    async def ready_files(self) -> AsyncIterator[Path]:
        self._start_observer()
        last_scan = 0.0
        try:
            while True:
                if time.monotonic() - last_scan >= RESCAN_SECONDS:
                    self._rescan()
                    last_scan = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    path = await asyncio.wait_for(self._events.get(), POLL_SECONDS)
                    self._note(path)
                while not self._events.empty():
                    self._note(self._events.get_nowait())
                for path in self._stable_paths():
                    yield path
        finally:
            self._stop_observer()

    def _start_observer(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._watched = _identity(self.inbox)
        observer = Observer()
        observer.schedule(
            _Forward(asyncio.get_running_loop(), self._events, self.inbox),
            str(self.inbox),
            recursive=False,
        )
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def _rescan(self) -> None:
        """Catch what events missed; restart the observer if the inbox was recreated."""
        if not self.inbox.is_dir():
            log.warning("inbox %s is missing; creating it", self.inbox)
            self._restart_observer()
            return
        if _identity(self.inbox) != self._watched:
            log.warning("inbox %s was replaced by a new folder; watching the new one", self.inbox)
            self._restart_observer()
        try:
            with os.scandir(self.inbox) as entries:
                found = [Path(e.path) for e in entries if not e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return
        for path in found:
            self._note(path)
        if self._observer is not None and not self._observer.is_alive():
            self._restart_observer()

    def _restart_observer(self) -> None:
        self._stop_observer()
        self._start_observer()

    def _note(self, path: Path) -> None:
        if path == self.inbox:
            log.warning("inbox %s was deleted or moved; watching the folder of its name", path)
            self._restart_observer()
            return
        if path.parent != self.inbox or path in self._claimed or not is_candidate(path):
            return
        try:
            stat = path.lstat()
        except OSError:
            self._pending.pop(path, None)
            return
        signature = (stat.st_size, stat.st_mtime_ns)
        previous = self._pending.get(path)
        if previous is None or previous[:2] != signature:
            self._pending[path] = (*signature, time.monotonic())

    def _stable_paths(self) -> list[Path]:
        now = time.monotonic()
        ready = []
        for path, (size, mtime_ns, since) in list(self._pending.items()):
            self._note(path)
            current = self._pending.get(path)
            if current is None or current[:2] != (size, mtime_ns):
                continue
            if now - since >= self._stable_seconds:
                del self._pending[path]
                self._claimed.add(path)
                ready.append(path)
        return ready
