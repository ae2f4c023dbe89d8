"""The process adaspec starts to run one untrusted candidate (see adaspec/evaluation/sandbox.py).

The candidate runs its code and setup, then evaluates each test expression it was sent (never the expected
values, which stay with adaspec) and writes every value as tagged JSON of plain literals to a pipe the
supervisor drains; the supervisor relays them in its report. Anything else a value holds is an error.

Run as a script (`python -I -S sandbox_supervisor.py`), standard library only, possibly as PID 1 of fresh
network, PID and mount namespaces. Protocol on stdin: an 8-byte length, a JSON request of that length, then
the pass token. The candidate is forked *before* the token is read, so the token never enters its memory;
the report (token, exit status, the values) goes to stdout, which the candidate cannot
reach: its own stdin, stdout and stderr are /dev/null and it runs as another uid or non-dumpable.
"""

import builtins
import ctypes
import json
import os
import platform
import re
import resource
import signal
import sys
import time

# Imported before the privileges are dropped: the interpreter's library may not be readable by `nobody`.
PRELOAD = (
    "array",
    "bisect",
    "cmath",
    "collections",
    "copy",
    "datetime",
    "decimal",
    "fractions",
    "functools",
    "encodings.idna",
    "heapq",
    "importlib",
    "itertools",
    "json",
    "math",
    "operator",
    "random",
    "re",
    "socket",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "typing",
)
NOBODY = 65534
_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine())  # the keyctl syscall's number
_JOIN_SESSION_KEYRING, _CLEAR = 1, 7
_USER_KEYRING, _USER_SESSION_KEYRING = -4, -5
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = (
    1,
    2,
    4,
    8,
    32,
    1024,
    2048,
    4096,
)
_MS_RELATIME = 1 << 21
# per-mount options that a read-only bind remount must repeat (dropping a locked one is refused)
_KEEP = {
    "nosuid": _MS_NOSUID,
    "nodev": _MS_NODEV,
    "noexec": _MS_NOEXEC,
    "noatime": _MS_NOATIME,
    "nodiratime": _MS_NODIRATIME,
    "relatime": _MS_RELATIME,
}
_WRITABLE = ("/tmp", "/dev", "/proc")  # the candidate's own tmpfs; device nodes and procfs keep their own rules
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _hide(paths: list, libc) -> list:
    """Mount an empty private tmpfs over each existing folder; returns the ones hidden."""
    hidden = []
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path) and os.path.realpath(path) != "/":
            if libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=16m,mode=755") == 0:
                hidden.append(path)
    return hidden


class Refused(Exception):
    """A layer the candidate must have is missing: it is not run."""


def _read_only_elsewhere(libc) -> bool:
    """Remount every mount but _WRITABLE read-only in our mount namespace, so a candidate cannot change a
    file outside its folder even where its uid may (run without root, it keeps the caller's uid)."""
    ok = True
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
        options = fields[5].split(",")
        if "ro" in options or any(point == w or point.startswith(w + "/") for w in _WRITABLE):
            continue
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | sum(bit for name, bit in _KEEP.items() if name in options)
        ok &= libc.mount(None, point.encode(), None, flags, None) == 0
    return ok


def _isolate_filesystem(request: dict) -> str | None:
    """In our own mount namespace: hide folders, give the candidate a fresh tmpfs home; its path or None."""
    if os.getpid() != 1 or not request["namespaces"]:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if not _hide(["/tmp"], libc):
        return None
    _hide(request["hide"], libc)
    if not _read_only_elsewhere(libc):
        raise Refused("the file system outside the candidate's folder could not be made read-only")
    workdir = "/tmp/work"
    os.mkdir(workdir, 0o700)
    if request["drop_uid"]:
        os.chown(workdir, NOBODY, NOBODY)
    return workdir


def _lock_mounts() -> None:
    """Without root: a nested user and mount namespace, so the candidate's capabilities there cannot
    unmount the folders hidden above (inherited mounts are locked); it keeps its own uid, mapped to itself."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _keyctl(*args: int) -> None:
    if _KEYCTL is not None:
        ctypes.CDLL(None, use_errno=True).syscall(_KEYCTL, *[ctypes.c_long(a) for a in args])


def _clear_keyrings_of(uid: int) -> None:
    """Empty `uid`'s user keyrings, which outlive its processes, in a child that becomes that uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for keyring in (_USER_KEYRING, _USER_SESSION_KEYRING):
                _keyctl(_CLEAR, keyring)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _limit(request: dict) -> None:
    cpu = request["cpu_seconds"]
    for limit, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_AS, request["memory_bytes"], request["memory_bytes"]),
        (resource.RLIMIT_FSIZE, request["file_bytes"], request["file_bytes"]),
    ):
        resource.setrlimit(limit, (soft, hard))
    if request["forbid_processes"]:
        # set after setuid, so exec still works; 0 means any fork or thread of this uid fails
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


MAX_RESULTS = 4 << 20  # bytes of values a candidate may send


def encode(value: object, depth: int = 0) -> object:
    """A plain literal as tagged JSON, by exact type (a subclass, or any other object, raises TypeError)."""
    if depth > 64:
        raise TypeError("too deep")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return {"f": repr(value)}
    if kind is complex:
        return {"c": [repr(value.real), repr(value.imag)]}
    tags = {list: "l", tuple: "t", set: "s", frozenset: "fs"}
    if kind in tags:
        return {tags[kind]: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise TypeError(f"{kind.__name__} is not a plain literal")


def _candidate(request: dict, workdir: str, done_w: int) -> None:
    """The forked child: drop privileges, run code and setup, send the test expressions' values; never
    returns."""
    status = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, done_w)
        os.closerange(done_w + 1, 1 << 16)
        if request["drop_uid"]:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        elif request["namespaces"]:
            _lock_mounts()
        os.chdir(workdir)
        _keyctl(_JOIN_SESSION_KEYRING, 0)  # a fresh anonymous session keyring, not the caller's
        _limit(request)
        scope = {"__name__": "__main__", "__builtins__": builtins}
        compile_, dumps, write = compile, json.dumps, os.write  # held before the candidate's code can patch them
        for source in [request["code"], request["setup"]]:
            exec(compile_(source, "<candidate>", "exec"), scope)
        values = []
        for source in request["calls"]:
            try:
                values.append(encode(eval(compile_(source, "<test>", "eval"), scope)))  # noqa: S307
            except BaseException:  # noqa: BLE001 -- a failing or unsendable test value fails that test
                values.append({"error": 1})
        data = dumps(values).encode()
        while data:
            data = data[write(done_w, data) :]
        status = 0
    except BaseException:  # noqa: BLE001 -- any failure of untrusted code is a fail, never a crash here
        status = 1
    os._exit(status)


def _wait(pid: int, timeout: float, results_r: int, received: bytearray) -> int | None:
    """Wait for the candidate while draining its values (a full pipe would block it), at most MAX_RESULTS."""
    deadline = time.monotonic() + timeout
    os.set_blocking(results_r, False)
    while time.monotonic() < deadline:
        _drain(results_r, received)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _drain(results_r, received)
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    return None


def _drain(fd: int, received: bytearray) -> None:
    while len(received) <= MAX_RESULTS:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            return
        received.extend(chunk)


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    size = int.from_bytes(_read_exact(0, 8), "big")
    request = json.loads(_read_exact(0, size))
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: a same-uid candidate cannot read us
    try:
        workdir = _isolate_filesystem(request) or request["workdir"]
    except Refused as exc:
        sys.stdout.write(json.dumps({"refused": str(exc)}) + "\n")
        sys.stdout.flush()
        return
    if request["drop_uid"] and workdir == request["workdir"]:
        os.chown(workdir, NOBODY, NOBODY)
    if request["drop_uid"]:
        _clear_keyrings_of(NOBODY)  # nothing an earlier run left there
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(done_r)
        _candidate(request, workdir, done_w)
    os.close(done_w)
    token = os.read(0, 256).decode().strip()  # only now: the candidate's memory never held it
    received = bytearray()
    code = _wait(pid, request["timeout"], done_r, received)
    if code is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)  # everything left in our PID namespace
        except ProcessLookupError:
            pass
    if request["drop_uid"]:
        _clear_keyrings_of(NOBODY)
    results = received.decode(errors="replace") if len(received) <= MAX_RESULTS else None
    sys.stdout.write(json.dumps({"token": token, "exit": code, "results": results}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
