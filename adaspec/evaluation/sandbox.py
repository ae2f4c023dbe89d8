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
- a fresh empty working directory, deleted afterwards (a private tmpfs, or a temporary folder), and every
  other mount remounted read-only in the run's mount namespace, so even run under the caller's own uid (no
  root) the candidate cannot change the caller's files; where that remount fails the run is refused
  (`SandboxRefused`, naming the layer) instead of scored;
- the verdict is decided here, outside the candidate's process: each test `assert A == B` is split with
  `ast`; the sandbox receives only the expressions A (the calls into the candidate's code) and returns each
  value as a plain literal (None, bool, int, float, complex, str, and lists, tuples, sets and dicts of them,
  checked by exact type: an object whose `==` is always true cannot be sent); the expected values B are
  computed here and never reach the sandbox. A pass also needs exit status 0 and a token the candidate's
  memory never held (so it cannot forge the supervisor's report). Patching `compile`, walking frames or
  printing the expected values therefore decides nothing. An `assert X` of another form is judged by X
  evaluating to exactly True in the sandbox (MBPP's tests are all of the `A == B` form).
The supervisor process is `sandbox_supervisor.py`; this module starts it and reads its verdict.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from adaspec.errors import AdaspecError

_SUPERVISOR = Path(__file__).with_name("sandbox_supervisor.py")
# --ipc: System V shared memory, semaphores and queues a candidate makes die with its namespace
_UNSHARE = ["--net", "--pid", "--ipc", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation", "private"]
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
    finished: bool  # the sandbox returned a value for every test expression
    isolation: Isolation


class SandboxRefused(AdaspecError):
    """The sandbox lacks a layer a candidate must have (the message names it): no score is given."""


_TRUE = object()  # the expected "value" of a bare `assert X`: X must be exactly True
_EXPECTED_NAMES = {
    "sys": sys,
    "math": math,
    "__builtins__": {
        n: getattr(builtins, n)
        for n in (
            "set",
            "frozenset",
            "tuple",
            "list",
            "dict",
            "abs",
            "round",
            "sorted",
            "len",
            "float",
            "int",
            "str",
            "range",
            "min",
            "max",
            "sum",
        )
    },
}


def split_tests(tests: list[str]) -> tuple[list[str], list[object]] | None:
    """(expressions the sandbox evaluates, expected values computed here) of `assert A == B` / `assert X`
    tests; None when a test is anything else (it cannot be judged outside the candidate's process)."""
    calls: list[str] = []
    expected: list[object] = []
    for test in tests:
        try:
            body = ast.parse(test).body
        except SyntaxError:
            return None
        for node in body:
            if not isinstance(node, ast.Assert):
                return None
            e = node.test
            if isinstance(e, ast.Compare) and len(e.ops) == 1 and isinstance(e.ops[0], ast.Eq):
                try:  # the dataset's expected value, evaluated here (trusted text, a restricted namespace)
                    value = eval(
                        compile(ast.Expression(e.comparators[0]), "<expected>", "eval"),  # noqa: S307
                        dict(_EXPECTED_NAMES),
                    )
                except Exception:  # noqa: BLE001 -- it needs the candidate's names: judged as a bare assert
                    calls.append(ast.unparse(e))
                    expected.append(_TRUE)
                    continue
                calls.append(ast.unparse(e.left))
                expected.append(value)
            else:
                calls.append(ast.unparse(e))
                expected.append(_TRUE)
    return calls, expected


def decode(value: object, depth: int = 0) -> object:
    """A value the sandbox sent (tagged JSON) as the Python literal it stood for; ValueError otherwise."""
    if depth > 64:
        raise ValueError("too deep")
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is dict and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "f" and type(body) is str:
            return float(body)
        if tag == "c" and type(body) is list and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
        if tag in ("l", "t", "s", "fs") and type(body) is list:
            items = [decode(v, depth + 1) for v in body]
            return {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag](items)
        if tag == "d" and type(body) is list:
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    raise ValueError(f"not a plain literal: {str(value)[:60]}")


def _matches(sent: object, expected: object) -> bool:
    try:
        value = decode(sent)
    except (ValueError, TypeError):
        return False
    if expected is _TRUE:
        return value is True
    try:
        return bool(value == expected)
    except Exception:  # noqa: BLE001 -- plain literals compare; anything odd is a fail
        return False


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
            ok = (
                subprocess.run(
                    [*prefix, "true"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=10,
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return tuple(prefix)
    return None


def isolation() -> Isolation:
    """The layers a candidate gets on this machine."""
    in_namespaces = _unshare_prefix() is not None
    root = os.geteuid() == 0
    return Isolation(
        network_isolated=in_namespaces,
        processes_contained=in_namespaces,
        filesystem_isolated=in_namespaces,
        separate_uid=root,
    )


def _hidden_folders() -> list[str]:
    return [*_ALWAYS_HIDDEN, os.path.expanduser("~"), os.getcwd(), tempfile.gettempdir()]


def run_candidate(
    code: str,
    tests: list[str],
    setup: str = "",
    timeout: float = 5.0,
    memory_mb: int = 1024,
    file_mb: int = 16,
    forbid_processes: bool = True,
) -> RunResult:
    """Run `code`, then `setup`, then each of `tests` in the sandbox; never raises on bad code.

    `forbid_processes=False` exists only to test that leftover processes are killed.
    """
    iso = isolation()
    split = split_tests(tests)
    if split is None:  # a test this harness cannot judge outside the candidate: never a pass
        return RunResult(False, None, False, iso)
    calls, expected = split
    prefix = list(_unshare_prefix() or ())
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="adaspec_sandbox_") as workdir:
        request = {
            "code": code,
            "setup": setup,
            "calls": calls,
            "workdir": workdir,
            "hide": _hidden_folders(),
            "timeout": timeout,
            "cpu_seconds": max(1, int(timeout) + 1),
            "memory_bytes": memory_mb * 2**20,
            "file_bytes": file_mb * 2**20,
            "forbid_processes": forbid_processes,
            "drop_uid": iso.separate_uid,
            "namespaces": iso.network_isolated,
        }
        payload = json.dumps(request).encode()
        message = len(payload).to_bytes(8, "big") + payload + token.encode() + b"\n"
        try:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-S", str(_SUPERVISOR)],
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            return RunResult(False, None, False, iso)
        try:
            out, _ = proc.communicate(message, timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            out = b""
        finally:
            _kill_session(proc)
    return _verdict(out, token, expected, iso)


def _verdict(out: bytes, token: str, expected: list[object], iso: Isolation) -> RunResult:
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
        sent = json.loads(report.get("results") or "null")
    except (ValueError, IndexError, UnicodeDecodeError, AttributeError, TypeError):
        return RunResult(False, None, False, iso)
    if report.get("refused"):
        raise SandboxRefused(f"an MBPP candidate was not run: {report['refused']}")
    exit_code = report.get("exit")
    finished = type(sent) is list and len(sent) == len(expected)
    passed = (
        secrets.compare_digest(str(report.get("token", "")), token)
        and exit_code == 0
        and finished
        and all(_matches(s, e) for s, e in zip(sent, expected))
    )
    return RunResult(passed, exit_code, finished, iso)


def _kill_session(proc: subprocess.Popen) -> None:
    """Kill the supervisor's whole session (with namespaces its exit also kills every process it left)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait()
