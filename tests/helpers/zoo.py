"""The real mmdetection v2 configs for the zoo tests, fetched from the package registry at test time.

``mmdet==2.28.2`` (its ``configs/``) and ``mmdet==2.18.0`` (the three ``configs/fp16`` files of that
era) are downloaded once with ``pip download --no-deps`` into ``$MIXPREC_TEST_CACHE`` (default
``~/.cache/mixprec-tests``) and unpacked there; never into the repository. No registry, no test:
``pytest.skip`` says why.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers.tool_runs import load_tool

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VERSIONS = ('2.28.2', '2.18.0')


def cache_dir() -> str:
    return os.environ.get('MIXPREC_TEST_CACHE') or osp.join(osp.expanduser('~'), '.cache', 'mixprec-tests')


def _wheel(version: str, folder: str) -> str:
    found = glob.glob(osp.join(folder, f'mmdet-{version}-*.whl'))
    if found:
        return found[0]
    cmd = [sys.executable, '-m', 'pip', 'download', f'mmdet=={version}', '--no-deps', '--only-binary', ':all:',
           '-d', folder, '--quiet', '--disable-pip-version-check']
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f'cannot fetch mmdet=={version} from the package registry: {exc}')
    found = glob.glob(osp.join(folder, f'mmdet-{version}-*.whl'))
    if out.returncode != 0 or not found:
        last = (out.stderr.strip().splitlines() or ['no wheel'])[-1]
        pytest.skip(f'cannot fetch mmdet=={version} from the package registry (offline?): {last}')
    return found[0]


def _unpack_configs(wheel: str, dest: str) -> str:
    """``mmdet/.mim/configs`` of ``wheel`` unpacked to ``dest`` (once); returns that configs folder."""
    configs = osp.join(dest, 'configs')
    if not osp.isdir(configs):
        tmp = dest + f'.tmp{os.getpid()}'
        prefix = 'mmdet/.mim/configs/'
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith(prefix) and not name.endswith('/'):
                    target = osp.join(tmp, 'configs', name[len(prefix):])
                    os.makedirs(osp.dirname(target), exist_ok=True)
                    with open(target, 'wb') as f:
                        f.write(archive.read(name))
        os.makedirs(osp.dirname(dest), exist_ok=True)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    return configs


def mmdet_configs() -> tuple[str, str]:
    """(mmdet 2.28.2's ``configs`` folder, mmdet 2.18.0's ``configs/fp16`` folder)."""
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    new, old = (_unpack_configs(_wheel(v, folder), osp.join(folder, f'mmdet-{v}')) for v in VERSIONS)
    return new, osp.join(old, 'fp16')


def check_tool():
    """tools/analysis_tools/check_mmdet_zoo.py as a module."""
    return load_tool('tools/analysis_tools/check_mmdet_zoo.py')
