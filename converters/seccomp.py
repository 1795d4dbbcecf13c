"""A seccomp filter for the converter sandbox, built with libseccomp through ctypes.

Defence in depth behind bubblewrap's namespaces: even inside its empty network
namespace a converter cannot open an Internet socket (socket() other than AF_UNIX fails
with EAFNOSUPPORT), and the kernel interfaces that sandbox escapes usually go through
(ptrace, new namespaces, mounts, keyrings, BPF, perf, userfaultfd, module loading) fail
with EPERM. New namespaces are refused however they are asked for: `unshare` and `setns`
outright, `clone` when its flags carry any `CLONE_NEW*` bit, and `clone3`, whose flags
sit in a struct a filter cannot read, with ENOSYS, so that glibc falls back to `clone`
(bubblewrap's `--disable-userns` closes the user namespace a second way).
Everything else is allowed: a converter is ordinary Python and C code (a deny list;
docs/threat-model.md says why not an allow list).
Syscalls of other architectures (32-bit int 0x80 on x86-64) kill the process, which is
libseccomp's default for a filter built for the native architecture only.

The program is exported as BPF into an anonymous file that bubblewrap reads through
`--seccomp FD`. Without libseccomp the sandbox runs without the filter and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket

_ALLOW = 0x7FFF0000
_CMP_NE = 1
_CMP_MASKED_EQ = 7
#: clone() flags that make a new namespace (CLONE_NEWTIME is only valid for clone3/unshare).
CLONE_NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
#: Denied outright (EPERM): what escapes and kernel exploits need, never what renders.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "unshare", "setns", "mount",
    "umount2", "pivot_root", "chroot", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "userfaultfd", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup",
    "fsopen", "fsmount", "move_mount", "open_tree",
)


class _ArgCmp(ctypes.Structure):
    _fields_ = (("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64))


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp))
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    return lib


def _rules(lib: ctypes.CDLL, ctx: int) -> None:
    for name in DENIED_SYSCALLS:
        _add(lib, ctx, name, errno.EPERM)
    not_unix = (_ArgCmp * 1)(_ArgCmp(0, _CMP_NE, socket.AF_UNIX, 0))
    _add(lib, ctx, "socket", errno.EAFNOSUPPORT, not_unix)
    for flag in CLONE_NEW_FLAGS.values():  # one rule a bit: any of them set is refused
        _add(lib, ctx, "clone", errno.EPERM, (_ArgCmp * 1)(_ArgCmp(0, _CMP_MASKED_EQ, flag, flag)))
    _add(lib, ctx, "clone3", errno.ENOSYS)


def _add(lib: ctypes.CDLL, ctx: int, name: str, code: int,
         conditions: ctypes.Array[_ArgCmp] | None = None) -> None:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        return  # not on this architecture
    count = len(conditions) if conditions is not None else 0
    if lib.seccomp_rule_add_array(ctx, _errno_action(code), number, count, conditions):
        raise OSError(f"seccomp rule for {name}")


def filter_fd() -> int | None:
    """A file descriptor positioned at the start of the BPF program, or None without
    libseccomp. The caller passes it to bwrap (`pass_fds`) and closes it afterwards."""
    lib = _library()
    if lib is None:
        return None
    ctx = lib.seccomp_init(_ALLOW)
    if not ctx:
        return None
    fd = os.memfd_create("mugaika-seccomp", 0)
    try:
        _rules(lib, ctx)
        if lib.seccomp_export_bpf(ctx, fd):
            raise OSError("seccomp export")
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        return None
    finally:
        lib.seccomp_release(ctx)
    return fd
