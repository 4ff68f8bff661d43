"""Stop signals of a training run: the main process owns them, DataLoader workers never die of them.

Schedulers and terminals signal a whole process group (``timeout``, SLURM's time limit, ``scancel`` and
preemption, systemd, Ctrl-C, torchrun's agent), so the data workers get the signal the runner handles.
The runner records the signals it handles here; while a loader starts its workers, those signals are
blocked in the starting thread (:func:`starting_workers`), so a worker, forked or spawned, begins with
them blocked and then drops them, unless they come from its parent (:func:`shield_worker`): workers
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

_handled: tuple = ()  # the signals the running training loop handles
_starting = False  # inside starting_workers(): a process forked now is a DataLoader worker
_shielded = False
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
    meanwhile waits, and reaches the main process when the block ends. A forked worker shields
    itself at once (an at-fork hook); a spawned one in its ``worker_init_fn``.
    """
    global _starting
    if not _handled:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _handled)
    _starting = True
    try:
        yield
    finally:
        _starting = False
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shield_worker() -> None:
    """In a DataLoader worker: ignore the stop signals it started with blocked (:func:`starting_workers`),
    except from its parent.

    The signals stay blocked (so neither the default action nor a handler inherited from the runner
    ever runs here); a thread takes them with ``sigwaitinfo`` and drops them unless the parent sent
    them: the loader's shutdown and the interpreter's exit end workers with SIGTERM
    (``Process.terminate``), and an ignored one would leave the parent waiting for them forever.
    Outside a training run nothing is blocked and a worker keeps the default actions.
    """
    global _shielded
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if _shielded or not blocked:
        return
    _shielded = True
    threading.Thread(target=_drop_stop_signals, args=(blocked, os.getppid()), name='stop-signal-shield',
                     daemon=True).start()


def _drop_stop_signals(signals: set, parent: int) -> None:
    """Exit 0 on the parent's signal, as torch's own worker SIGTERM handler does: the parent's SIGCHLD
    check reports a worker that exits otherwise while its loader is alive (at interpreter exit)."""
    while True:
        if signal.sigwaitinfo(signals).si_pid == parent:
            os._exit(0)


def _after_fork_in_child() -> None:
    if _starting:
        shield_worker()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
