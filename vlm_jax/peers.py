"""A dead peer of a multi-process run, reported in one line.

When a process of a jax.distributed run dies (kill -9, a host lost) and no launcher stops the
others (SLURM, TPU VMs), jax's coordination service notices its missing heartbeats after
`heartbeat_timeout` (measured: 14 s after a kill -9 at a 20 s timeout) and aborts every other
process from C++: a fatal-error log and a stack dump per thread, with the cause in the middle.
This watchdog notices first and ends the process with one line naming the process that
stopped. A collective that fails first (gloo's "Connection reset by peer") ends the same way
(`exit_if_peer_lost`, called by main with the train loop's error).

Every process beats (a counter in the coordination service's key-value store) every
`timeout / 20` s. Process 0 reads all the counters; a peer whose counter has not moved for
`timeout / 4` s (25 s at jax's default 100, far above any stall of this thread) is dead:
process 0 posts the verdict, so the other processes print the same line, and everyone exits.
A process that cannot reach the store has lost process 0, which hosts it. `mark_finished`
(after a run that ended well) stops the beats without a verdict. Checkpoints are committed
atomically, so exiting here keeps every finished one.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_BEAT, _VERDICT = "vlm_jax/beat/", "vlm_jax/dead_peer"
DEAD_PEER_EXIT = 75  # EX_TEMPFAIL: rerun the run once every process is back


class PeerWatch:
    """Beats for this process and, on process 0, judges the others; see the module doc."""

    def __init__(self, client, process_id: int, num_processes: int, timeout: float,
                 clock=time.monotonic):
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.interval, self.patience = max(0.5, timeout / 20), timeout / 4
        self.clock = clock
        self._beats = 0
        self._seen: dict[int, tuple[str, float]] = {}  # peer -> (last counter, when it moved)
        self._stop = threading.Event()

    def step(self) -> str | None:
        """One beat and one look; returns the verdict line when the run must stop."""
        self._beats += 1
        try:
            self.client.key_value_set(f"{_BEAT}{self.process_id}", str(self._beats),
                                      allow_overwrite=True)
            if self.process_id != 0:
                verdict = _try_get(self.client, _VERDICT)
                return verdict or None
            return self._judge(dict(self.client.key_value_dir_get(_BEAT)))
        except Exception as error:  # the store lives in process 0: it is gone
            return (f"process 0 of {self.num_processes} (the coordinator) cannot be reached "
                    f"({type(error).__name__}); it crashed or was killed")

    def _judge(self, beats: dict[str, str]) -> str | None:
        now = self.clock()
        for peer in range(1, self.num_processes):
            count = beats.get(f"{_BEAT}{peer}", "")
            last = self._seen.get(peer)
            if last is None or last[0] != count:
                self._seen[peer] = (count, now)
            elif count != "finished" and now - last[1] > self.patience:
                verdict = (f"process {peer} of {self.num_processes} stopped sending heartbeats "
                           f"{now - last[1]:.0f} s ago; it crashed or was killed")
                self.client.key_value_set(_VERDICT, verdict, allow_overwrite=True)
                return verdict
        return None

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            verdict = self.step()
            if verdict and not self._stop.is_set():
                if self.process_id == 0:
                    time.sleep(1.5 * self.interval)  # the others read the verdict, then we go
                _exit(verdict)

    def mark_finished(self) -> None:
        self._stop.set()
        try:
            self.client.key_value_set(f"{_BEAT}{self.process_id}", "finished",
                                      allow_overwrite=True)
        except Exception:  # noqa: BLE001  (the run is over; the others finish on their own)
            pass


def _exit(cause: str) -> None:
    """One line, then out at once: jax's exit hooks would wait on the dead peer and abort."""
    sys.stderr.write(f"error: {cause}. The last checkpoint is kept; restart every process with "
                     "the same command to resume\n")
    sys.stderr.flush()
    os._exit(DEAD_PEER_EXIT)


# How a collective says the process at the other end is gone (gloo on CPU, NCCL, gRPC).
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Connection refused",
              "Socket closed", "heartbeat timeout", "unhealthy", "NCCL", "UNAVAILABLE")


def exit_if_peer_lost(error: BaseException) -> None:
    """Called with an error out of the train loop: when it is a collective that lost its peer
    (a multi-process run only), end in one line instead of a traceback and jax's abort."""
    if _watch is None:
        return
    text = str(error)
    if any(marker in text for marker in _LOST_PEER):
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        _exit(f"a collective with the other processes failed ({first[:160]}): a peer process "
              "crashed or was killed")


def _try_get(client, key: str) -> str:
    try:
        return client.key_value_try_get(key)
    except Exception as error:  # NOT_FOUND is how an absent key answers
        if "NOT_FOUND" in str(error) or "not found" in str(error).lower():
            return ""
        raise


_watch: PeerWatch | None = None


def start(timeout: float) -> None:
    """Start the watch of this jax.distributed process (call after jax.distributed.initialize)."""
    global _watch
    import jax
    from jax._src import distributed

    if jax.process_count() < 2 or distributed.global_state.client is None:
        return
    _watch = PeerWatch(distributed.global_state.client, jax.process_index(),
                       jax.process_count(), timeout)
    threading.Thread(target=_watch.run, name="vlm_jax-peer-watch", daemon=True).start()


def mark_finished() -> None:
    """This process ended well: its silence from now on is not a death."""
    if _watch is not None:
        _watch.mark_finished()
