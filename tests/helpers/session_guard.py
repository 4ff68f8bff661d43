"""The files under a folder, recorded and compared, for the session guard in ``tests/conftest.py``."""
from __future__ import annotations

import os

SKIPPED = {'.git', '__pycache__'}


def snapshot(top: str) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of the files under ``top``."""
    files = {}
    for folder, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        for name in names:
            path = os.path.join(folder, name)
            try:
                stat = os.lstat(path)
            except FileNotFoundError:
                continue
            files[os.path.relpath(path, top)] = (stat.st_size, stat.st_mtime_ns)
    return files


def differences(before: dict, after: dict, tracked: set[str]) -> list[str]:
    """Lines naming the files that appeared, vanished, or changed while untracked."""
    lines = [f'new: {p}' for p in sorted(set(after) - set(before))]
    lines += [f'changed: {p}' for p in sorted(set(before) & set(after) - tracked) if before[p] != after[p]]
    lines += [f'removed: {p}' for p in sorted(set(before) - set(after))]
    return lines
