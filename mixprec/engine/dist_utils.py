"""Distributed helpers: torchrun initialisation, rank queries and collective shortcuts."""
from __future__ import annotations

import datetime
import os
from typing import Any, Optional

import torch
import torch.distributed as dist


def init_dist(launcher: str, backend: str | None = None, timeout_s: int = 1800) -> None:
    """Initialise the default process group from torchrun's (or SLURM's) environment.

    NCCL when CUDA is available, gloo on the CPU, unless ``backend`` says otherwise.
    """
    if launcher == 'slurm':
        _slurm_env_to_torchrun()
    elif launcher != 'pytorch':
        raise ValueError(f'launcher must be "none", "pytorch" or "slurm", got {launcher!r}')
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher {launcher} needs the environment torchrun sets; missing {", ".join(missing)}')
    if backend is None or (backend == 'nccl' and not torch.cuda.is_available()):
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    if backend == 'nccl':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def _slurm_env_to_torchrun() -> None:
    """Translate srun's variables into the ones ``init_process_group('env://')`` reads."""
    os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
    os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
    os.environ.setdefault('LOCAL_RANK', os.environ['SLURM_LOCALID'])
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        import subprocess
        nodes = os.environ['SLURM_NODELIST']
        first = subprocess.check_output(['scontrol', 'show', 'hostnames', nodes], text=True).split()[0]
        os.environ['MASTER_ADDR'] = first


def close_dist() -> None:
    """Wait for every rank, then tear the process group down.

    A rank that exits with its gloo group still open can abort in the group's destructor
    ("terminate called without an active exception") while a peer is still closing its
    connections, turning a finished run into a failed one; call this at the end of a run.
    """
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_dist_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside a distributed run."""
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class RankFailedError(RuntimeError):
    """Raised on the ranks that did not fail when another rank failed in a step they share."""


def raise_if_any_rank_failed(error: Optional[BaseException], what: str) -> None:
    """Every rank calls this after ``what`` with the exception it caught there (or None); when any
    rank failed, every rank raises at once: its own exception where it failed, elsewhere a
    :class:`RankFailedError` naming the first failing rank and its error.

    Without it a rank that raises between two collectives leaves the others waiting in the next
    one until the process group times out (30 minutes). One all_gather_object of a short string.
    """
    if not is_dist():
        if error is not None:
            raise error
        return
    line = None
    if error is not None:
        text = str(error).strip().splitlines()
        line = f'{type(error).__name__}: {text[0] if text else ""}'.rstrip(': ')
    failures = [(rank, msg) for rank, msg in enumerate(all_gather_object(line)) if msg is not None]
    if error is not None:
        raise error
    if failures:
        rank, msg = failures[0]
        more = f' (also ranks {[r for r, _ in failures[1:]]})' if len(failures) > 1 else ''
        raise RankFailedError(f'rank {rank} failed in {what}: {msg}{more}')


def collect_results(part: list, size: int) -> list | None:
    """Gather each rank's results on rank 0 in dataset order, dropping sampler padding.

    Ranks hold interleaved shards (rank r has samples r, r + W, r + 2W, ...) as the
    distributed test sampler deals them; returns None on ranks other than 0.
    """
    rank, world = get_dist_info()
    if world == 1:
        return part[:size]
    parts: list | None = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    if rank != 0:
        return None
    ordered = [res for group in zip(*parts) for res in group]
    return ordered[:size]
