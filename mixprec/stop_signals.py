"""Stop signals of a training run: the main process owns them, DataLoader workers never die of them.

Schedulers and terminals signal a whole process group (``timeout``, SLURM's time limit, ``scancel`` and
preemption, systemd, Ctrl-C, torchrun's agent), so the data workers get the signal the runner handles.
The runner records the signals it handles here; while a loader starts its workers, those signals are
blocked in the starting thread (:func:`starting_workers`), so a worker, forked or spawned, begins with
them blocked, and its ``worker_init_fn`` turns them into ignored ones (:func:`shield_worker`). Workers
end with the loader, as the main process shuts it down. Shared by the engine (the runner's handlers,
the test loop) and the data loaders (their workers), so it sits below both.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from typing import Callable, Iterator, Optional, Sequence, Union

from .registry import ConfigError

_handled: tuple = ()
# signals that cannot stop a run cleanly: uncatchable, or part of normal process life
_REFUSED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGSEGV,
            signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT, signal.SIGPIPE}


def parse_signal(value: Union[str, int, None], where: str) -> Optional[signal.Signals]:
    """``'SIGUSR1'``, ``'USR1'``, ``10`` or None (none) as a signal; anything else is one ConfigError line."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            name = value.upper()
            sig = signal.Signals[name if name.startswith('SIG') else 'SIG' + name]
        elif isinstance(value, int) and not isinstance(value, bool):
            sig = signal.Signals(value)
        else:
            raise ValueError
    except (KeyError, ValueError):
        sig = None
    if sig is None or sig in _REFUSED:
        raise ConfigError(f"{where}: expected a catchable signal other than SIGINT and SIGTERM, such as 'SIGUSR1' "
                          f"or 'SIGUSR2' (or None for no advance-warning signal), got {value!r}")
    return sig


@contextlib.contextmanager
def handled(signals: Sequence[int], handler: Callable) -> Iterator[None]:
    """``handler`` for ``signals`` in this process while the block runs, recorded for :func:`starting_workers`.

    Outside the main thread Python cannot set handlers: nothing is installed or recorded.
    """
    global _handled
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    outer, _handled = _handled, tuple(signals)
    try:
        yield
    finally:
        _handled = outer
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def starting_workers() -> Iterator[None]:
    """Block the handled stop signals in this thread while DataLoader workers start (``iter(loader)``).

    A child inherits the starting thread's signal mask (through fork and exec alike), so a worker never
    runs a moment with the default action (death) or the runner's handler; a signal that arrives
    meanwhile waits, and reaches the main process when the block ends.
    """
    if not _handled:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _handled)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shield_worker() -> None:
    """In a DataLoader worker: ignore the stop signals it started with blocked (see :func:`starting_workers`).

    A signal already pending is discarded. Outside a training run nothing is blocked and a worker keeps
    the default actions.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    for sig in blocked:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def requeue_slurm_job(logger: logging.Logger) -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` (the job returns to the queue and starts again, ``--auto-resume``
    continuing it); outside SLURM, or when scontrol fails, one log line and no requeue."""
    job = os.environ.get('SLURM_JOB_ID')
    if not job:
        logger.info('not running under SLURM (no SLURM_JOB_ID): no requeue')
        return False
    scontrol = shutil.which('scontrol')
    if scontrol is None:
        logger.warning('SLURM job %s: scontrol is not on PATH; the job is not requeued', job)
        return False
    try:
        done = subprocess.run([scontrol, 'requeue', job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning('SLURM job %s: scontrol requeue failed (%s); the job is not requeued', job, exc)
        return False
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        logger.warning('SLURM job %s: scontrol requeue exited with %d (%s); the job is not requeued', job,
                       done.returncode, reason[0] if reason else 'no message')
        return False
    logger.info('SLURM job %s requeued (scontrol requeue %s); it continues from the checkpoint when it starts '
                'again with --auto-resume', job, job)
    return True
