"""Several server processes on one port, kept running by the process that started them.

With `[server] workers = N` (or `--workers N`) the process started by the user becomes the
supervisor: it opens no socket and no store and serves nobody. It starts N worker processes
(multiprocessing's "spawn" method: each is a fresh interpreter, so no event loop, uvloop state,
thread, lock or open file of the parent is inherited); each builds its own server and binds the
port with SO_REUSEPORT, so the kernel spreads new connections over the workers.

- A worker that dies is logged with its exit code or signal and started again after a delay
  that doubles (from `RestartDelay.FIRST` up to `RestartDelay.LONGEST`) while it keeps dying
  soon after it started, so a crash loop does not spin.
- A worker that fails before it ever listened, at start-up, stops everything with its exit code:
  the same configuration would fail in every restart (a bad setting, a port in use).
- SIGTERM or SIGINT: every worker gets SIGTERM and runs its own graceful shutdown; the
  supervisor waits for them (SIGKILL past `stop_timeout`) and exits.
- Signals in `forward` (SIGHUP with TLS: reload the certificate) are passed on to every worker
  that listens (one still starting reads the files anyway).
- A worker watches its pipe to the supervisor: if the supervisor disappears (SIGKILL, OOM
  killer), the worker shuts down gracefully instead of holding the port as an orphan.
- A listening worker's event loop sends a beat over the pipe every second or so; one silent for
  `hang_timeout` (a plugin stuck in a loop, a blocking call that never returns) is logged,
  killed and restarted like a worker that died, since a stuck loop serves nobody.

This module knows processes only; what a worker runs is the `target` the composition root
(`server.__main__`) names. It is named as "module:function", not passed as a function: a
spawned process imports it by that name, and the module run as `python -m server` is
`__main__` in the supervisor but must be `server.__main__` in a worker.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .plugins import import_object

log = logging.getLogger("stratus.supervisor")

READY = b"ready"
BEAT = b"beat"
# Exit statuses of a worker that was asked to stop: 0, or the signal itself if it came before
# the worker's own signal handlers were installed.
STOPPED_CLEANLY = (0, -signal.SIGTERM, -signal.SIGINT)


def describe_exit(exitcode: int | None) -> str:
    """How a worker ended, for the log: "exited with code 1", "killed by signal SIGKILL"."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"killed by signal {name}"
    return f"exited with code {exitcode}"


class RestartDelay:
    """Seconds to wait before restarting a worker: doubles while it keeps dying young."""

    FIRST = 0.5
    LONGEST = 30.0
    # A worker that ran this long before dying was healthy: its next restart is quick again.
    STABLE_AFTER = 30.0

    def __init__(self) -> None:
        self.delay = 0.0

    def after_death(self, ran_for: float) -> float:
        """The delay before the next start of a worker that died after `ran_for` seconds."""
        if ran_for >= self.STABLE_AFTER or self.delay == 0.0:
            self.delay = self.FIRST
        else:
            self.delay = min(self.delay * 2, self.LONGEST)
        return self.delay


class WorkerLink:
    """The worker's end of its pipe to the supervisor (passed to `target`)."""

    def __init__(self, connection: Connection, beat_interval: float = 0.0) -> None:
        self._connection = connection
        self.supervisor_pid = os.getpid()  # made by the supervisor, pickled into the worker
        self.beat_interval = beat_interval  # 0: the supervisor does not watch for hangs

    def started(self) -> None:
        """Tell the supervisor the worker listens (a later death is a crash, not a failed start)
        and, from the running event loop, that it keeps turning."""
        try:
            self._connection.send_bytes(READY)
        except OSError:  # the supervisor is gone; `watch` shuts the worker down
            return
        if self.beat_interval > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(self.beat_interval, self._beat, loop)

    def _beat(self, loop: Any) -> None:
        # Sent from a loop callback: a loop that is stuck sends nothing.
        try:
            self._connection.send_bytes(BEAT)
        except OSError:
            return
        loop.call_later(self.beat_interval, self._beat, loop)

    def watch(self, loop: Any, supervisor_gone: Callable[[], None]) -> None:
        """Call `supervisor_gone` (once) when the supervisor's end of the pipe closes."""
        fd = self._connection.fileno()

        def readable() -> None:
            try:
                self._connection.recv_bytes()
            except (EOFError, OSError):
                loop.remove_reader(fd)
                log.warning("the supervisor is gone (pid %d): shutting down",
                            self.supervisor_pid)
                supervisor_gone()

        loop.add_reader(fd, readable)


@dataclass
class Slot:
    """One worker position (1..N): its current process and its restart history."""

    index: int
    process: Any = None  # multiprocessing.Process
    channel: Connection | None = None  # the supervisor's end of the pipe
    started_at: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    last_beat: float = 0.0  # when its event loop last said it turns (monotonic)
    restart_at: float | None = None  # when a dead worker is due to start again
    delay: RestartDelay = field(default_factory=RestartDelay)


def _worker_main(target: str, index: int, payload: Any, link: WorkerLink) -> None:
    # The first code of a worker process: import the target by name and run it.
    import_object(target)(index, payload, link)


class Supervisor:
    """Starts `count` workers running `target(index, payload, link)` and keeps them running.

    `target` is a "module:function" name; the function runs in the worker, gets the worker's
    index (1..count), `payload` (pickled) and its `WorkerLink`, and ends with `sys.exit(code)`.
    """

    def __init__(self, count: int, target: str, payload: Any, stop_timeout: float,
                 forward: tuple[int, ...] = (), hang_timeout: float = 0.0) -> None:
        self.count = count
        self.forward = forward
        self.hang_timeout = hang_timeout
        # Beats often enough that a few lost to a busy moment never look like a hang.
        self.beat_interval = min(1.0, hang_timeout / 4) if hang_timeout > 0 else 0.0
        self.target = target
        self.payload = payload
        self.stop_timeout = stop_timeout
        self.slots = [Slot(index) for index in range(1, count + 1)]
        self._context = multiprocessing.get_context("spawn")
        self._signals: list[int] = []  # stop signals received
        self._to_forward: list[int] = []
        self._all_ready_logged = False

    # Running

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (then 0, or 1 if a worker did not stop cleanly) or
        until a worker fails to start (then its exit code)."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous = self._install_signal_handlers(wake_write)
        try:
            log.info("starting %d workers (supervisor pid %d)", self.count, os.getpid())
            for slot in self.slots:
                if not self._start(slot):
                    self._stop_all()
                    return 1
            while True:
                failed = self._step(wake_read)
                if failed is not None:
                    self._stop_all()
                    return failed
                if self._signals:
                    name = signal.Signals(self._signals[0]).name
                    log.info("%s received: stopping %d workers", name, self.count)
                    return self._stop_all()
        finally:
            self._restore_signal_handlers(previous)
            os.close(wake_read)
            os.close(wake_write)

    def _install_signal_handlers(self, wake_write: int) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def record(signum: int, frame: Any) -> None:
            self._signals.append(signum)

        def record_forward(signum: int, frame: Any) -> None:
            self._to_forward.append(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, record)
        for sig in self.forward:
            previous[sig] = signal.signal(sig, record_forward)
        previous[-1] = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _step(self, wake_read: int) -> int | None:
        """Wait for a worker event, a signal or a due restart and handle it; a worker's exit
        code if it failed to start."""
        now = time.monotonic()
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if self.hang_timeout > 0:
            due += [slot.last_beat + self.hang_timeout for slot in self.slots if slot.ready]
        timeout = max(0.0, min(due) - now) if due else None
        waitables: list[Any] = [wake_read]
        for slot in self.slots:
            if slot.process is not None:
                waitables.append(slot.process.sentinel)
                if slot.channel is not None:
                    waitables.append(slot.channel)
        ready = wait(waitables, timeout)
        if wake_read in ready:
            try:
                while os.read(wake_read, 512):
                    pass
            except BlockingIOError:
                pass
        if self._signals:
            return None
        while self._to_forward:
            self._pass_on(self._to_forward.pop(0))
        for slot in self.slots:
            if slot.channel is not None and slot.channel in ready:
                self._message(slot)
        for slot in self.slots:
            if slot.process is not None and slot.process.sentinel in ready:
                failed = self._died(slot)
                if failed is not None:
                    return failed
        now = time.monotonic()
        if self.hang_timeout > 0:
            for slot in self.slots:
                if slot.ready and now - slot.last_beat > self.hang_timeout:
                    self._kill_hung(slot, now)
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                slot.restart_at = None
                if not self._start(slot):  # try again later, like a worker that died young
                    slot.restart_at = now + slot.delay.after_death(0.0)
        return None

    def _pass_on(self, sig: int) -> None:
        listening = [slot for slot in self.slots if slot.process is not None and slot.ready]
        for slot in listening:
            try:
                os.kill(slot.process.pid, sig)
            except ProcessLookupError:
                pass
        log.info("%s passed on to %d workers", signal.Signals(sig).name, len(listening))

    def _start(self, slot: Slot) -> bool:
        """Start the slot's worker; False (logged) if the system refused a new process."""
        try:
            parent_end, child_end = multiprocessing.Pipe(duplex=True)
        except OSError as exc:
            log.error("cannot start worker %d: %s", slot.index, exc)
            return False
        process = self._context.Process(
            target=_worker_main,
            args=(self.target, slot.index, self.payload,
                  WorkerLink(child_end, self.beat_interval)),
            name=f"stratus-worker-{slot.index}",
        )
        try:
            process.start()
        except OSError as exc:  # out of processes, memory or file descriptors
            log.error("cannot start worker %d: %s", slot.index, exc)
            parent_end.close()
            return False
        finally:
            child_end.close()  # only the worker holds it now: its closing tells us it is gone
        slot.process, slot.channel = process, parent_end
        slot.started_at = time.monotonic()
        slot.ready = False
        log.info("worker %d started (pid %d)", slot.index, process.pid)
        return True

    def _message(self, slot: Slot) -> None:
        try:
            message = slot.channel.recv_bytes()
        except (EOFError, OSError):  # the worker is gone; its sentinel says so
            slot.channel.close()
            slot.channel = None
            return
        if message == BEAT:
            slot.last_beat = time.monotonic()
        elif message == READY:
            slot.ready = slot.ever_ready = True
            slot.last_beat = time.monotonic()
            if not self._all_ready_logged and all(s.ready for s in self.slots):
                self._all_ready_logged = True
                log.info("all %d workers are listening", self.count)

    def _kill_hung(self, slot: Slot, now: float) -> None:
        """A listening worker whose event loop stopped turning: kill it (its death is then
        handled like any other: logged and restarted)."""
        slot.ready = False  # killed once; the sentinel reports the death
        log.error("worker %d (pid %d) has not answered for %.1f s (its event loop is stuck): "
                  "killing it", slot.index, slot.process.pid, now - slot.last_beat)
        try:
            os.kill(slot.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _died(self, slot: Slot) -> int | None:
        process = slot.process
        process.join()
        exitcode = process.exitcode
        pid = process.pid
        process.close()
        if slot.channel is not None:
            slot.channel.close()
        slot.process = slot.channel = None
        slot.ready = False
        ran_for = time.monotonic() - slot.started_at
        if not slot.ever_ready:
            log.error("worker %d (pid %d) %s before it listened: stopping", slot.index, pid,
                      describe_exit(exitcode))
            return exitcode if exitcode and exitcode > 0 else 1
        delay = slot.delay.after_death(ran_for)
        slot.restart_at = time.monotonic() + delay
        log.warning("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
                    slot.index, pid, describe_exit(exitcode), ran_for, delay)
        return None

    # Stopping

    def _stop_all(self) -> int:
        """SIGTERM every worker, wait for them (SIGKILL past the deadline); 0 if all stopped
        cleanly."""
        running = [slot for slot in self.slots if slot.process is not None]
        for slot in running:
            try:
                os.kill(slot.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_timeout
        clean = True
        for slot in running:
            process = slot.process
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker %d (pid %d) did not stop within %.0f s: killing it",
                          slot.index, process.pid, self.stop_timeout)
                process.kill()
                process.join()
                clean = False
            elif process.exitcode not in STOPPED_CLEANLY:
                log.error("worker %d (pid %d) %s while stopping", slot.index, process.pid,
                          describe_exit(process.exitcode))
                clean = False
            process.close()
            if slot.channel is not None:
                slot.channel.close()
            slot.process = slot.channel = None
        log.info("all workers stopped")
        return 0 if clean else 1
