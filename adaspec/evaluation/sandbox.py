"""Run one untrusted candidate program (MBPP's generated code plus its asserts) and say whether it passed.

Layers, each used where the OS offers it (`isolation()` says which ones this machine gets):
- namespaces (`unshare --net --pid --ipc --mount`): no network at all, every process and every System V IPC
  object of the run dies with it, and /tmp, /etc, /run, home folders and the caller's folder are replaced
  by empty private tmpfs;
- kernel keyrings: the candidate gets a fresh session keyring, and with a separate uid that uid's keyrings
  are cleared before and after each run, so nothing a candidate stores there reaches the next one;
- a different uid (65534, when adaspec runs as root): the candidate cannot write the caller's files; run
  by another user, the candidate gets a nested user namespace instead, in which the hiding mounts are
  locked (it cannot unmount them);
- resource limits: CPU time, address space, file size, no core files, and no new processes or threads;
- a fresh empty working directory, deleted afterwards (a private tmpfs, or a temporary folder);
- the verdict: exit status 0, the harness reached the line after the last assert (a per-run nonce), and a
  token the candidate's memory never held, so the candidate cannot print or write a pass for itself.
The supervisor process is `sandbox_supervisor.py`; this module starts it and reads its verdict.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SUPERVISOR = Path(__file__).with_name("sandbox_supervisor.py")
# --ipc: System V shared memory, semaphores and queues a candidate makes die with its namespace
_UNSHARE = ["--net", "--pid", "--ipc", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation",
            "private"]
_ALWAYS_HIDDEN = ["/etc", "/run", "/var/tmp", "/dev/shm", "/home", "/root", "/mnt", "/media", "/srv"]


@dataclass(frozen=True)
class Isolation:
    """Which layers this machine gives a candidate (recorded with every MBPP score)."""

    network_isolated: bool  # a network namespace of its own: no interface but a down loopback
    processes_contained: bool  # a PID namespace: every process of the run dies with the supervisor
    filesystem_isolated: bool  # temp, config and home folders hidden, and a uid that owns none of your files
    separate_uid: bool  # runs as uid 65534 (needs adaspec to run as root)

    def as_dict(self) -> dict[str, bool]:
        return dict(vars(self))


@dataclass(frozen=True)
class RunResult:
    passed: bool
    exit_code: int | None  # None: killed at the time limit
    finished: bool  # the harness ran past the last assert
    isolation: Isolation


@functools.cache
def _unshare_prefix() -> tuple[str, ...] | None:
    """The namespace wrapper if this machine lets us create the namespaces (root, or user namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        return None
    attempts = [[unshare, *_UNSHARE]] if os.geteuid() == 0 else []
    attempts.append([unshare, "--map-root-user", *_UNSHARE])
    for prefix in attempts:
        try:
            ok = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return tuple(prefix)
    return None


def isolation() -> Isolation:
    """The layers a candidate gets on this machine."""
    in_namespaces = _unshare_prefix() is not None
    root = os.geteuid() == 0
    return Isolation(network_isolated=in_namespaces, processes_contained=in_namespaces,
                     filesystem_isolated=in_namespaces, separate_uid=root)


def _hidden_folders() -> list[str]:
    return [*_ALWAYS_HIDDEN, os.path.expanduser("~"), os.getcwd(), tempfile.gettempdir()]


def run_candidate(code: str, tests: list[str], setup: str = "", timeout: float = 5.0, memory_mb: int = 1024,
                  file_mb: int = 16, forbid_processes: bool = True) -> RunResult:
    """Run `code`, then `setup`, then each of `tests` in the sandbox; never raises on bad code.

    `forbid_processes=False` exists only to test that leftover processes are killed.
    """
    iso = isolation()
    prefix = list(_unshare_prefix() or ())
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="adaspec_sandbox_") as workdir:
        request = {"code": code, "setup": setup, "tests": list(tests), "workdir": workdir,
                   "hide": _hidden_folders(), "timeout": timeout, "cpu_seconds": max(1, int(timeout) + 1),
                   "memory_bytes": memory_mb * 2**20, "file_bytes": file_mb * 2**20,
                   "forbid_processes": forbid_processes, "drop_uid": iso.separate_uid,
                   "namespaces": iso.network_isolated}
        payload = json.dumps(request).encode()
        message = len(payload).to_bytes(8, "big") + payload + token.encode() + b"\n"
        try:
            proc = subprocess.Popen([*prefix, sys.executable, "-I", "-S", str(_SUPERVISOR)], cwd=workdir,
                                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            return RunResult(False, None, False, iso)
        try:
            out, _ = proc.communicate(message, timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            out = b""
        finally:
            _kill_session(proc)
    return _verdict(out, token, iso)


def _verdict(out: bytes, token: str, iso: Isolation) -> RunResult:
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        return RunResult(False, None, False, iso)
    exit_code, finished = report.get("exit"), report.get("finished") is True
    passed = secrets.compare_digest(str(report.get("token", "")), token) and exit_code == 0 and finished
    return RunResult(passed, exit_code, finished, iso)


def _kill_session(proc: subprocess.Popen) -> None:
    """Kill the supervisor's whole session (with namespaces its exit also kills every process it left)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait()
