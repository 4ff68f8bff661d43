"""The tools (``tools/train.py``, ``tools/test.py``...) imported as modules, or run in subprocesses as a
user runs them, and the one error line they print."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from typing import Optional

from helpers.tiny import ROOT


def load_tool(path: str) -> types.ModuleType:
    """The tool script at ``path`` (relative to the repository root) imported as a new module, registered in
    ``sys.modules`` as ``tool_<path>`` so that its dataclasses and pickled objects resolve."""
    name = 'tool_' + re.sub(r'\W', '_', path)
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tool_env(*paths: str, **extra: str) -> dict:
    """The environment of a tool subprocess: one thread, mixprec (and ``paths``) importable."""
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([*paths, ROOT]), **extra)


def start_tool(tool: str, *args: str, cwd: str, env: Optional[dict] = None,
               launcher: Optional[str] = None) -> subprocess.Popen:
    """Start ``tools/<tool>`` (or ``launcher`` running it) with ``cwd`` inside the test's tmp_path."""
    script = os.path.join(ROOT, 'tools', tool)
    cmd = [sys.executable, *([launcher] if launcher else []), script, *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env or tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_tool(tool: str, *args: str, cwd: str, env: Optional[dict] = None, timeout: float = 300,
             launcher: Optional[str] = None) -> subprocess.CompletedProcess:
    return finish(start_tool(tool, *args, cwd=cwd, env=env, launcher=launcher), timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` / ``interrupted: ...`` line a tool printed on stderr (progress bars and
    library warnings aside), with no traceback."""
    lines = re.findall(r'(?:\[rank \d+\] )?(?:error|interrupted): [^\r\n]*', proc.stderr)
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, f'rc {proc.returncode}, stderr:\n{proc.stderr[-3000:]}'
    return lines[0]
