"""mmcv 1.7.2's pure-Python sources for the side-by-side compatibility tests, from the package registry.

Its sdist (``pip download mmcv==1.7.2 --no-deps --no-binary :all:``) is fetched once into
``$MIXPREC_TEST_CACHE`` (default ``~/.cache/mixprec-tests``) and its ``mmcv/`` package unpacked
there; never into the repository. The name ``mmcv`` is mmcv-lite 2.x's too, so mmcv 1.7.2 is
imported only in a subprocess whose ``sys.path`` puts it first (:func:`run_side_by_side`); its
runner, hooks and fp16 utilities need nothing compiled, and their imports (addict, yapf, OpenCV,
packaging) come with mmcv-lite and mmengine. No registry, no test: ``pytest.skip`` says why.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from helpers.zoo import cache_dir

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VERSION = '1.7.2'
SCRIPT = osp.join(osp.dirname(osp.abspath(__file__)), 'mmcv1_side_by_side.py')
IMPORT_FAILED = 3  # the script's exit status when mmcv 1.7.2 cannot be imported (a missing dependency)


def _sdist(folder: str) -> str:
    found = glob.glob(osp.join(folder, f'mmcv-{VERSION}.tar.gz'))
    if found:
        return found[0]
    # pip prepares the sdist's metadata, and mmcv's setup.py imports pkg_resources, which setuptools
    # dropped: pin an older setuptools for that build (PIP_CONSTRAINT reaches the isolated build
    # environment of older pips, PIP_BUILD_CONSTRAINT that of newer ones).
    constraint = osp.join(folder, 'mmcv1-build-constraints.txt')
    with open(constraint, 'w') as f:
        f.write('setuptools<70\n')
    env = dict(os.environ, PIP_CONSTRAINT=constraint, PIP_BUILD_CONSTRAINT=constraint)
    cmd = [sys.executable, '-m', 'pip', 'download', f'mmcv=={VERSION}', '--no-deps', '--no-binary', ':all:',
           '-d', folder, '--quiet', '--disable-pip-version-check']
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f'cannot fetch mmcv=={VERSION} from the package registry: {exc}')
    found = glob.glob(osp.join(folder, f'mmcv-{VERSION}.tar.gz'))
    if out.returncode != 0 or not found:
        last = (out.stderr.strip().splitlines() or ['no sdist'])[-1]
        pytest.skip(f'cannot fetch mmcv=={VERSION} from the package registry (offline?): {last}')
    return found[0]


def mmcv1_root() -> str:
    """A folder holding mmcv 1.7.2's ``mmcv`` package (unpacked once from its sdist)."""
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    dest = osp.join(folder, f'mmcv-{VERSION}-src')
    if osp.isfile(osp.join(dest, 'mmcv', 'runner', 'hooks', 'hook.py')):
        return dest
    prefix = f'mmcv-{VERSION}/mmcv/'
    tmp = dest + f'.tmp{os.getpid()}'
    with tarfile.open(_sdist(folder)) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.startswith(prefix) and '..' not in member.name:
                target = osp.join(tmp, 'mmcv', member.name[len(prefix):])
                os.makedirs(osp.dirname(target), exist_ok=True)
                with open(target, 'wb') as f:
                    f.write(archive.extractfile(member).read())
    shutil.rmtree(dest, ignore_errors=True)
    try:
        os.rename(tmp, dest)
    except OSError:  # another process unpacked it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def run_side_by_side(out_dir: str) -> dict:
    """Run ``mmcv1_side_by_side.py`` with mmcv 1.7.2 first on the path and mixprec from this
    checkout; returns its results (``{scenario: {...}}``, loaded with ``weights_only=True``)."""
    root = mmcv1_root()
    out = osp.join(out_dir, 'side_by_side.pt')
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([root, ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    proc = subprocess.run([sys.executable, SCRIPT, root, out], capture_output=True, text=True, timeout=300,
                          env=env, cwd=out_dir)
    if proc.returncode == IMPORT_FAILED:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise AssertionError(f'mmcv1_side_by_side.py failed ({proc.returncode}):\n{proc.stdout[-4000:]}'
                             f'\n{proc.stderr[-6000:]}')
    return torch.load(out, weights_only=True)
