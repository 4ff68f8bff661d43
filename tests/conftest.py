"""Session guard: the test suite writes only inside its temporary directories.

Every file under the repository (but ``.git`` and ``__pycache__``) is recorded at the start of the
session with its size and mtime; a file that appeared or vanished by the end fails the session, and
so does a changed file that git does not track (outputs: the tools' default ``work_dirs/`` and
``data/`` folders). Changed tracked files are left to ``git status``: people edit them while tests
run. When pytest runs from another folder, new entries in that folder fail the session too.
"""
from __future__ import annotations

import logging
import os
import subprocess

import pytest
import torch

from helpers.session_guard import differences, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked_files() -> set[str]:
    """The files git tracks in the repository (none when git or the repository is unavailable)."""
    try:
        out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(out.stdout.split('\0')) if out.returncode == 0 else set()


def _outside_repo(path: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), ROOT]) != ROOT


@pytest.fixture(scope='session', autouse=True)
def no_writes_outside_tmp():
    """Fail the session if a test wrote into the repository (or into the folder pytest runs from)."""
    cwd = os.getcwd()
    repo_before = snapshot(ROOT)
    tracked = tracked_files()
    cwd_before = set(os.listdir(cwd)) if _outside_repo(cwd) else None
    yield
    problems = [f'{ROOT}: {line}' for line in differences(repo_before, snapshot(ROOT), tracked)]
    if cwd_before is not None:
        problems += [f'{cwd}: new: {name}' for name in sorted(set(os.listdir(cwd)) - cwd_before)]
    if problems:
        shown = '; '.join(problems[:20]) + ('; ...' if len(problems) > 20 else '')
        pytest.fail(f'the tests wrote outside their temporary directories: {shown}', pytrace=False)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared machine two OpenMP threads mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def mixprec_logger_propagates():
    """Tools run in-process (``tools/train.py``'s ``main``) set the 'mixprec' logger not to propagate,
    which would hide its records from ``caplog`` in every later test; each test starts with it on."""
    logging.getLogger('mixprec').propagate = True

