"""What a notebook's process holds without reading any file: the environment block and the kernel's keyrings.

A notebook's process is a fork of the sandbox server, so it holds the server's environment as the kernel wrote
it at exec (a student's code reads it off its own stack), and the session keyring the server inherited from the
teacher's login; a key in the sandbox uid's own keyrings outlives the notebook, for the next one on that uid."""

from __future__ import annotations

import ctypes
import json
import os

import pytest

from vit_edu.classroom import child, isolation, sandbox


def test_the_server_gets_only_what_python_and_torch_read_of_the_grader_s_environment():
    environ = {"PATH": "/usr/bin", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "2", "LD_LIBRARY_PATH": "/opt/lib",
               "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": "/course", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
               "CANVAS_API_TOKEN": "t0k3n", "GITHUB_TOKEN": "ghp_x", "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1"}
    assert child.server_environment(environ) == {k: environ[k] for k in
                                                 ("PATH", "LC_ALL", "OMP_NUM_THREADS", "LD_LIBRARY_PATH",
                                                  "CUDA_VISIBLE_DEVICES", "PYTHONPATH")}


def _keyctl_works() -> bool:
    if not sandbox.privileged() or os.uname().machine not in child.KEYCTL:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(child.KEYCTL[os.uname().machine]), ctypes.c_long(0), ctypes.c_long(-4),
                        ctypes.c_long(0)) >= 0  # KEYCTL_GET_KEYRING_ID of the user keyring: refused by seccomp


def _in_child(body) -> object:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(body()).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 65536)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(out)


@pytest.mark.skipif(not _keyctl_works(), reason="needs root and a kernel (and seccomp profile) that allows keyctl")
def test_a_notebook_reaches_neither_the_teacher_s_keyring_nor_a_key_the_last_notebook_left():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    number = ctypes.c_long(child.KEYCTL[os.uname().machine])
    add_key = {"x86_64": 248, "aarch64": 217, "ppc64le": 269, "s390x": 278, "riscv64": 217}[os.uname().machine]

    def add(name: bytes, ring: int) -> int:
        return libc.syscall(ctypes.c_long(add_key), b"user", name, name, ctypes.c_long(len(name)), ctypes.c_long(ring))

    def find(name: bytes) -> list:
        return [ring for ring in (-3, -4, -5)
                if libc.syscall(number, ctypes.c_long(10), ctypes.c_long(ring), b"user", name, ctypes.c_long(0)) > 0]

    pool = isolation.UidPool(1)
    uid = pool.free[0]

    def notebook(leave_a_key: bool):
        def run():
            isolation._drop_privileges({"uid": uid, "gid": uid, "isolate": False})
            child._leave_keyrings()
            seen = {"teacher": find(b"teacher_ticket"), "last": find(b"last_notebook")}
            if leave_a_key:
                assert add(b"last_notebook", -4) > 0  # KEY_SPEC_USER_KEYRING: the uid's, not the process's
            return seen
        return run

    def teacher():  # a login shell's session keyring (pam_keyinit), holding a ticket, then the server's forks
        assert libc.syscall(number, ctypes.c_long(1), b"teacher_login") > 0  # KEYCTL_JOIN_SESSION_KEYRING
        assert add(b"teacher_ticket", -3) > 0
        return [_in_child(notebook(True)), _in_child(notebook(False))]

    try:
        first, second = _in_child(teacher)
    finally:
        pool.close()
    assert first == {"teacher": [], "last": []}
    assert second == {"teacher": [], "last": []}
