"""Preemption: a SIGTERM ends the run at a step boundary, where the loop saves a checkpoint.

Schedulers (TPU maintenance, SLURM, Kubernetes) send SIGTERM some seconds before killing a job.
With one process a Python handler notes the signal and the loop stops after the current step.
With several, the signal may reach the hosts at different steps while a checkpoint needs all of
them: jax's preemption sync service (started by jax.distributed, it catches SIGTERM itself)
agrees on one step, the one after the furthest host's, and reports it on every process.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`reached()`, called after each step, is True once a SIGTERM asks to save that step and stop.

    Call `reached` once after every step, on every process; `close()` puts back the SIGTERM
    handler that was there before.
    """

    def __init__(self) -> None:
        self.signalled = False
        self._synced = jax.process_count() > 1
        self._steps = 0  # steps of this process's life, the same count on every process
        self._installed = False
        # signal.signal works in the main thread only; elsewhere SIGTERM keeps its old meaning.
        if not self._synced and threading.current_thread() is threading.main_thread():
            # None: the old handler was not set from Python; the default is the closest.
            self._previous_handler = signal.signal(signal.SIGTERM, self._note) or signal.SIG_DFL
            self._installed = True

    def _note(self, signum, frame) -> None:
        del signum, frame
        self.signalled = True

    def reached(self) -> bool:
        self._steps += 1
        if self._synced:
            # Counted from 1 in every process, not the run's step: a signal that came before
            # the first call (say while compiling) is synced to step 1, and a resumed run's
            # step 101 would never reach that.
            self.signalled = multihost_utils.reached_preemption_sync_point(self._steps)
        return self.signalled

    def close(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._installed = False
