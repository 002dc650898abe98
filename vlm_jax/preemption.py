"""Preemption: a SIGTERM or Ctrl-C ends the run at a step boundary, where the loop saves.

Schedulers (TPU maintenance, SLURM, Kubernetes) send SIGTERM some seconds before killing a job.
With one process a Python handler notes the signal and the loop stops after the current step;
Ctrl-C (SIGINT) does the same, and a second Ctrl-C interrupts at once.
With several, the signal may reach the hosts at different steps while a checkpoint needs all of
them: jax's preemption sync service (started by jax.distributed, it catches SIGTERM itself)
agrees on one step, the one after the furthest host's, and reports it on every process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`reached()`, called after each step, is True once a SIGTERM asks to save that step and stop.

    Call `reached` once after every step, on every process; `close()` puts back the SIGTERM and
    SIGINT handlers that were there before.
    """

    def __init__(self) -> None:
        self.signalled = False
        self.signal_name = "SIGTERM"
        self._synced = jax.process_count() > 1
        self._steps = 0  # steps of this process's life, the same count on every process
        self._previous: dict[int, object] = {}
        # signal.signal works in the main thread only; elsewhere signals keep their old meaning.
        if threading.current_thread() is threading.main_thread():
            # With several processes jax's sync service owns SIGTERM. A Ctrl-C reaches every
            # process of the terminal's group (launch/local.sh's trainers too, and srun passes
            # it on): each turns it into a SIGTERM to itself, so the service agrees on a step.
            handlers = ({signal.SIGINT: self._sigint_to_sigterm} if self._synced else
                        {signal.SIGTERM: self._note, signal.SIGINT: self._note})
            for signum, handler in handlers.items():
                # None: the old handler was not set from Python; the default is the closest.
                self._previous[signum] = signal.signal(signum, handler) or signal.SIG_DFL

    def _note(self, signum, frame) -> None:
        del frame
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the last checkpoint is kept
        self.signalled = True
        self.signal_name = signal.Signals(signum).name

    def _sigint_to_sigterm(self, signum, frame) -> None:
        del signum, frame
        # `signalled` is the sync service's answer here, so a Ctrl-C is remembered apart.
        if self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the last checkpoint is kept
        self.signal_name = "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)

    def reached(self) -> bool:
        self._steps += 1
        if self._synced:
            # Counted from 1 in every process, not the run's step: a signal that came before
            # the first call (say while compiling) is synced to step 1, and a resumed run's
            # step 101 would never reach that.
            self.signalled = multihost_utils.reached_preemption_sync_point(self._steps)
        return self.signalled

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(worker_index: int = 0, worker_count: int = 0) -> None:
    """Run in a data worker process: the kernel SIGKILLs it when the trainer dies, even by
    kill -9, so no worker (and its shared memory) outlives the run. Linux only; a no-op elsewhere.

    The signature is grain's `worker_init_fn(worker_index, worker_count)`.
    """
    del worker_index, worker_count
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the trainer died before the prctl took effect
        os._exit(1)
