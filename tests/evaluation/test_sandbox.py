"""Every escape issue 12 found in the old MBPP runner, tried against the sandbox: each must fail."""

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from adaspec.evaluation import sandbox
from adaspec.evaluation.sandbox import run_candidate

ISO = sandbox.isolation()
needs_namespaces = pytest.mark.skipif(not ISO.network_isolated, reason="this OS gives no namespaces")
needs_uid = pytest.mark.skipif(not ISO.filesystem_isolated, reason="needs root for a separate uid")


def passes(code: str, tests: list[str] | None = None, **kw) -> bool:
    return run_candidate(code, tests or ["assert True"], **kw).passed


def test_correct_code_passes_and_wrong_fails():
    assert passes("def f(x):\n    return 2 * x", ["assert f(3) == 6"])
    assert not passes("def f(x):\n    return 2 * x", ["assert f(3) == 7"])
    assert not passes("def f(x) return", ["assert f(3) == 6"])


@needs_uid
def test_cannot_write_outside_its_folder(tmp_path):
    os.chmod(tmp_path, 0o777)  # even a folder anyone may write into
    targets = [tmp_path / "by_open", tmp_path / "by_system", Path.cwd() / f"pwned_{uuid.uuid4().hex}"]
    attempts = [
        f"open({str(targets[0])!r}, 'w').write('x')",
        f"import os\nassert os.system('echo x > {targets[1]}') == 0",
        f"open({str(targets[2])!r}, 'w').write('x')",
    ]
    for code in attempts:
        assert not passes(code)
    assert not any(t.exists() for t in targets)
    # writing inside its own folder works and the folder starts empty
    assert passes(
        "import os\nassert os.listdir('.') == []\nopen('ok', 'w').write('x')", ["assert open('ok').read() == 'x'"]
    )


@needs_uid
def test_cannot_read_etc_passwd():
    # /etc is an empty private tmpfs; the file cannot be read (and nothing it reads could leave anyway)
    assert passes("import os\nx = os.path.exists('/etc/passwd')", ["assert not x"])
    assert not passes("x = open('/etc/passwd').read()", ["assert 'root' in x"])


@needs_namespaces
@pytest.mark.parametrize("how", ["_socket", "reload", "child"])
def test_cannot_reach_a_local_listener(how):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    connect = f"s = S.socket(); s.connect(('127.0.0.1', {port}))"
    code = {
        "_socket": f"import _socket as S\n{connect}",
        "reload": f"import importlib, socket as S\nS = importlib.reload(S)\n{connect}",
        "child": (
            "import subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', \"import socket as S; {connect}\"], check=True)"
        ),
    }[how]
    try:
        assert not passes(code)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(pid)
        except OSError:
            pass
    return found


def test_cannot_start_a_process():
    marker = uuid.uuid4().hex
    code = f"import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'sleep 30; : {marker}'], start_new_session=True)"
    assert not passes(code)  # the fork itself fails: no new processes or threads
    assert not passes("import threading\nthreading.Thread(target=print).start()")
    assert not _processes_with(marker)


@needs_namespaces
def test_leftover_processes_are_killed_even_when_forks_are_allowed():
    marker = uuid.uuid4().hex
    code = f"import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'sleep 30; : {marker}'], start_new_session=True)"
    assert passes(code, forbid_processes=False)
    time.sleep(0.1)
    assert not _processes_with(marker)


def test_cannot_fake_a_pass():
    # gather every token-shaped string the candidate can reach, print/write them everywhere, exit 0 early
    steal = r"""
import os, re, sys
seen = ' '.join(sys.argv) + str(dict(os.environ)) + str(globals().get('__file__'))
for path in ['/proc/self/cmdline', '/proc/1/cmdline', '/proc/self/environ', '/proc/1/environ']:
    try:
        seen += open(path, 'rb').read().decode(errors='replace')
    except OSError:
        pass
for fd in range(64):
    try:
        seen += os.read(fd, 1 << 16).decode(errors='replace')
    except OSError:
        pass
for fd in range(64):
    try:
        os.readlink(f'/proc/self/fd/{fd}')
        seen += open(f'/proc/self/fd/{fd}', 'rb').read().decode(errors='replace')
    except OSError:
        pass
tokens = set(re.findall('[0-9a-f]{32}', seen)) or {'0' * 32}
for fd in range(64):
    for t in tokens:
        for line in (t, '{"token": "%s", "exit": 0, "finished": true}' % t):
            try:
                os.write(fd, (line + '\n').encode())
            except OSError:
                pass
os._exit(0)
"""
    assert not passes(steal, ["assert False"])
    assert not passes("import sys\nsys.exit(0)", ["assert False"])
    assert not passes("raise SystemExit(0)", ["assert False"])


def test_time_and_memory_limits_hold():
    start = time.monotonic()
    result = run_candidate("while True:\n    pass", ["assert True"], timeout=0.5)
    assert not result.passed and time.monotonic() - start < 5
    assert not passes("x = bytearray(2 * 2**30)", ["assert x"], memory_mb=256)
    assert not passes("open('big', 'wb').write(b'x' * 4 * 2**20)", file_mb=1)


def test_fallback_without_namespaces_is_recorded(monkeypatch):
    monkeypatch.setattr(sandbox, "_unshare_prefix", lambda: None)
    iso = sandbox.isolation()
    assert iso.network_isolated is False and iso.processes_contained is False
    result = run_candidate("def f():\n    return 1", ["assert f() == 1"])
    assert result.passed and result.isolation.network_isolated is False
    assert not run_candidate("import os\nos._exit(0)", ["assert True"]).passed
    assert not passes("import subprocess\nsubprocess.run(['/bin/true'])")


def test_eval_table_names_missing_layers():
    from adaspec.evaluation.table import format_table

    drafts = {
        "d": {
            "params": 1,
            "response_loss": 1.0,
            "alpha": 0.5,
            "alpha_drafted": 0.4,
            "tau": 1.5,
            "position_acceptance": [],
            "c": 0.1,
            "measured_speedup": 1.0,
            "measured_speedup_pooled": 1.0,
            "theoretical_speedup": 1.0,
            "analytic": {"alpha_greedy": 0.5, "alpha_sampling": 0.5, "sampling_temperature": 1.0},
            "same_as_target": 1,
        }
    }
    cfg = {
        "task": "mbpp",
        "split": "test",
        "n_prompts": 1,
        "max_new_tokens": 4,
        "gamma": 2,
        "adaptive_gamma": False,
        "temperature": 0.0,
        "top_p": 1.0,
        "prompts_truncated": 0,
        "sandbox": {"network_isolated": False, "processes_contained": True},
    }
    target = {"params": 1, "quality_metric": "pass@1", "quality": 0.0, "response_loss": 1.0, "tokens_per_s": 1.0}
    table = format_table({"config": cfg, "target": target, "drafts": drafts})
    assert "MBPP code ran without: network_isolated" in table


def _shm_segments() -> int:
    try:
        return len(Path("/proc/sysvipc/shm").read_text().splitlines()) - 1
    except OSError:
        return 0


@needs_namespaces
def test_system_v_shared_memory_dies_with_the_candidate():
    before = _shm_segments()
    grab = (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "ids = [libc.shmget(0, 1 << 20, 0o1000 | 0o600) for _ in range(4)]\nassert all(i >= 0 for i in ids)"
    )
    assert passes(grab)  # it may make segments inside its namespace ...
    assert _shm_segments() == before  # ... but none outlives it on the host


KEYS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ADD_KEY, KEYCTL = (248, 250) if __import__('platform').machine() == 'x86_64' else (217, 219)
"""


@needs_uid
def test_the_kernel_keyring_keeps_nothing_for_the_next_candidate():
    store = KEYS + (
        "key = libc.syscall(ADD_KEY, b'user', b'adaspec_secret', b'hunter2', 7, ctypes.c_long(-4))\nassert key > 0"
    )
    assert passes(store)  # stored in the user keyring of its uid ...
    find = KEYS + (
        "found = libc.syscall(KEYCTL, 10, ctypes.c_long(-4), b'user', b'adaspec_secret', 0)\nassert found > 0"
    )
    assert not passes(find)  # ... which the next candidate finds empty


# ---- the verdict is decided outside the candidate's process (round two: three fakes that passed before)

SOLUTION = "def add(a, b):\n    return a + b"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def test_a_correct_solution_passes_and_printing_the_expected_values_does_not():
    assert passes(SOLUTION, ADD_TESTS)
    assert passes("def f():\n    return {'a': (1, 2.5), 'b': {3}}", ["assert f() == {'a': (1, 2.5), 'b': {3}}"])
    assert not passes("print(3, 0, 4)\ndef add(a, b):\n    return 0", ADD_TESTS)
    assert not passes(SOLUTION, ["assert add(1, 2) == 3", "x = 1"])  # not an assert: cannot be judged


def test_walking_frames_to_the_harness_fakes_nothing():
    # the harness's locals (its pipe, any marker, the request) written back as the verdict, then exit 0
    walk = """
import json, os, sys
f, seen = sys._getframe(), {}
while f is not None:
    seen.update({k: v for k, v in f.f_locals.items() if k in ('nonce', 'done_w', 'request')})
    f = f.f_back
marker = seen.get('nonce', b'')
payload = marker if isinstance(marker, bytes) and marker else json.dumps(seen.get('request', {})).encode()
os.write(seen['done_w'], payload)
os._exit(0)
"""
    assert not passes(walk, ADD_TESTS)


def test_an_object_equal_to_everything_fakes_nothing():
    always = "class Eq:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Eq()"
    assert not passes(always, ADD_TESTS)
    int_like = "class I(int):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return I(7)"
    assert not passes(int_like, ADD_TESTS)


def test_patching_compile_fakes_nothing():
    patch = (
        "import builtins\nreal = builtins.compile\n"
        "builtins.compile = lambda src, *a, **k: real('True' if 'add' in str(src) else src, *a, **k)\n"
        "def add(a, b):\n    return None"
    )
    assert not passes(patch, ADD_TESTS)


@needs_namespaces
def test_files_outside_its_folder_are_read_only_even_where_its_uid_may_write():
    victim = Path(f"/opt/adaspec_victim_{uuid.uuid4().hex}")  # outside every hidden folder, writable by anyone
    victim.write_text("kept")
    victim.chmod(0o666)
    try:
        assert not passes(f"open({str(victim)!r}, 'w').write('pwned')")
        assert victim.read_text() == "kept"
    finally:
        victim.unlink()


def test_a_missing_layer_refuses_the_run_naming_it():
    report = b'{"refused": "the file system outside the candidate\'s folder could not be made read-only"}\n'
    with pytest.raises(sandbox.SandboxRefused, match="not run: the file system outside .* read-only"):
        sandbox._verdict(report, "t", [1], ISO)
