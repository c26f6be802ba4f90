"""Confine the current process: the task sandbox, shared by both task launchers.

``python -s -P _sandbox.py CONFIG_JSON -- COMMAND...`` confines itself with
:func:`confine` and execs COMMAND: the executor's ``exec`` launcher. It runs as
a script, imports nothing but the standard library, and runs single-threaded
in a fresh process, which ``preexec_fn`` in a threaded node could not promise.
The ``fork`` launcher (``_launcher.py``, single-threaded too) imports this
module and calls :func:`confine` in each task process it forks; no exec
follows there, which step 3 accounts for. In order, :func:`confine`:

1. sets the resource limits (CPU seconds, address space, file size, open
   files, no core dumps); they are hard limits, so the task cannot raise them;
2. as root, moves to a new, empty network namespace (no interface is up);
3. drops every capability from the bounding set, then clears the process's
   own: locks the securebits (``SECBIT_NOROOT``, ``SECBIT_NO_SETUID_FIXUP``,
   ``SECBIT_KEEP_CAPS_LOCKED``) so that uid 0 gains nothing on a later exec,
   clears the ambient set and sets the effective, permitted and inheritable
   sets to zero (``capset(2)``, header version 3). The task, even as uid 0,
   runs without privileges, whether or not it execs;
4. sets ``no_new_privs`` and applies a Landlock ruleset (Linux 5.13+): the
   command may read the interpreter, its libraries and the ``airfed`` code,
   may read and write only inside the task workdir, may not connect or bind
   TCP sockets (Landlock ABI 4+), nor signal processes outside the sandbox
   (ABI 6+);
5. installs a seccomp filter under which socket(2) fails, so that no Unix
   socket on disk (a database's, say) and no UDP port can be reached.

The script then execs the command. A step the kernel refuses is reported on
stderr and skipped; the executor's process group kill, clean environment and
limits still apply.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP and SECBIT_KEEP_CAPS, each locked; only
# KEEP_CAPS itself stays off.
_SECUREBITS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5)
_CLONE_NEWNET = 0x40000000

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FILE_RIGHTS_V1 = _EXECUTE | _WRITE_FILE | _READ_FILE
_ALL_FS_V1 = (1 << 13) - 1  # execute .. make_sym
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_READ = _EXECUTE | _READ_FILE | _READ_DIR

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_X32_SYSCALL_BIT = 0x40000000
# machine: (AUDIT_ARCH_*, number of the socket(2) system call)
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}

_libc = ctypes.CDLL(None, use_errno=True)


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


def _say(message: str) -> None:
    sys.stderr.write(f"airfed sandbox: {message}\n")


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


def _set_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        number = getattr(resource, name)
        hard = value + 5 if name == "RLIMIT_CPU" else value
        resource.setrlimit(number, (value, hard))


def _isolate_network() -> str:
    if os.geteuid() != 0:
        return "shared network (not root)"
    if _libc.unshare(_CLONE_NEWNET) != 0:
        return f"shared network ({_errno_text()})"
    return "no network"


def _drop_capabilities() -> str:
    if os.geteuid() != 0:
        _clear_own_capabilities()  # lowering needs no privilege
        return "no capabilities"
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for capability in range(last + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            return f"capabilities kept ({_errno_text()})"
    if _libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0) != 0:
        return f"capabilities kept (securebits: {_errno_text()})"
    problem = _clear_own_capabilities()
    if problem:
        return f"capabilities kept ({problem})"
    return "capabilities dropped"


def _clear_own_capabilities() -> str | None:
    """Empty the ambient, effective, permitted and inheritable sets."""
    if _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        return f"ambient: {_errno_text()}"
    header = _CapHeader(version=_LINUX_CAPABILITY_VERSION_3, pid=0)
    data = (_CapData * 2)()  # version 3: two 32-bit words per set, all zero
    if _libc.capset(ctypes.byref(header), data) != 0:
        return f"capset: {_errno_text()}"
    return None


def _landlock_abi() -> int:
    abi = _libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(int(abi), 0)


def _handled_fs(abi: int) -> int:
    rights = _ALL_FS_V1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def _ruleset(abi: int) -> int:
    attr = _RulesetAttr(handled_access_fs=_handled_fs(abi))
    size = 8
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
    fd = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"landlock ruleset: {_errno_text()}")
    return int(fd)


def _allow(ruleset: int, path: str, access: int, handled: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path this system does not have
    try:
        if not Path(path).is_dir():
            access &= _FILE_RIGHTS_V1 | _TRUNCATE | _IOCTL_DEV
        rule = _PathBeneath(allowed_access=access & handled, parent_fd=fd)
        if _libc.syscall(
            _SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH,
            ctypes.byref(rule), 0,
        ) != 0:  # fmt: skip
            raise OSError(ctypes.get_errno(), f"landlock rule {path}: {_errno_text()}")
    finally:
        os.close(fd)


def _confine_files(read: list[str], write: list[str]) -> str:
    abi = _landlock_abi()
    if abi < 1:
        return "files not confined (Landlock unavailable)"
    handled = _handled_fs(abi)
    ruleset = _ruleset(abi)
    try:
        for path in read:
            _allow(ruleset, path, _READ, handled)
        for path in write:
            _allow(ruleset, path, handled, handled)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"files not confined (no_new_privs: {_errno_text()})"
        if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return f"files not confined ({_errno_text()})"
    finally:
        os.close(ruleset)
    tcp = ", no TCP" if abi >= 4 else ""
    return f"files confined (Landlock ABI {abi}{tcp})"


def _forbid_sockets() -> str:
    """A seccomp filter that makes socket(2) fail with EACCES.

    Landlock does not cover connecting to Unix sockets by path (a database's
    socket, say), nor UDP; a function needs no socket at all (socketpair(2),
    which multiprocessing uses, stays allowed). Other architectures' system
    calls (32-bit and x32 on x86_64) are refused outright.
    """
    arch = _SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return "sockets allowed (no seccomp filter for this machine)"
    audit_arch, socket_nr = arch
    refuse = _SECCOMP_RET_ERRNO | 1  # EPERM
    program = [
        (_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_BPF_JEQ_K, 1, 0, audit_arch),
        (_BPF_RET_K, 0, 0, refuse),
        (_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (_BPF_JGE_K, 0, 1, _X32_SYSCALL_BIT),
        (_BPF_RET_K, 0, 0, refuse),
        (_BPF_JEQ_K, 0, 1, socket_nr),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | 13),  # EACCES
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*op) for op in program))
    fprog = _SockFprog(len(program), filters)
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"sockets allowed (no_new_privs: {_errno_text()})"
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0):
        return f"sockets allowed ({_errno_text()})"
    return "no sockets"


def confine(config: dict[str, Any]) -> None:
    """Apply steps 1 to 5 to this process and report them on stderr."""
    _set_limits(config["rlimits"])
    steps = [_isolate_network() if config["isolate_network"] else "shared network"]
    steps.append(_drop_capabilities())
    own_proc = f"/proc/{os.getpid()}"
    steps.append(_confine_files([*config["read"], own_proc], config["write"]))
    steps.append(_forbid_sockets())
    _say(", ".join(steps))
    sys.stderr.flush()


def main(argv: list[str]) -> None:
    separator = argv.index("--")
    config: dict[str, Any] = json.loads(argv[separator - 1])
    command = argv[separator + 1 :]

    confine(config)
    os.execv(command[0], command)  # noqa: S606 - argv from the executor, no shell


if __name__ == "__main__":
    main(sys.argv)
