"""Writes that never leave a half-written file and never replace what a user owns.

:func:`atomic_write` and :func:`atomic_folder` write beside the target and rename onto it, so
a reader sees the old file or the whole new one; :func:`check_replaceable` refuses to replace
anything but a regular file (a device, a FIFO, a folder, a symbolic link); :func:`ensure_writable`
probes a folder before any work is done, so a run fails at once rather than after its compute;
:func:`acquire_lock` gives a folder to one run at a time.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "ensure_writable",
    "check_replaceable",
    "atomic_write",
    "atomic_folder",
    "acquire_lock",
    "release_lock",
]


def ensure_writable(path: str | os.PathLike, what: str, fix: str) -> Path:
    """Check, creating nothing, that folder ``path`` can be written (or made, where it does
    not exist yet): raise one ``ValueError`` naming ``what`` and ``fix`` otherwise.

    Probes with a temporary file in the nearest existing folder, so a read-only mount, a
    folder without write permission or a path under a regular file all fail here, before
    any work is done (a root user may write into a folder without write permission).
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(
            f"{what} {str(path)!r} cannot be made: {str(probe)!r} is a file, not a folder; {fix}."
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dode-write-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(
            f"{what} {str(path)!r} is not writable ({e.strerror or e} in {str(probe)!r}); {fix}."
        ) from None
    return path


def _umask() -> int:
    """The process umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and set it back at once
    os.umask(mask)
    return mask


def check_replaceable(path: str | os.PathLike, what: str = "output file") -> Path:
    """``ValueError`` if ``path`` exists and is not a regular file (a device, a FIFO, a
    socket, a folder or a symbolic link): replacing it with a file would destroy what is
    there (as root, ``/dev/null`` itself). Returns ``path`` as a ``Path``."""
    import stat

    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise ValueError(f"{what} {str(path)!r} cannot be checked ({e.strerror or e}).") from None
    if stat.S_ISREG(st.st_mode):
        return path
    if stat.S_ISLNK(st.st_mode):
        kind = f"a symbolic link (to {os.readlink(path)!r})"
    elif stat.S_ISDIR(st.st_mode):
        kind = "a folder"
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        kind = "a device"
    elif stat.S_ISFIFO(st.st_mode):
        kind = "a named pipe (FIFO)"
    elif stat.S_ISSOCK(st.st_mode):
        kind = "a socket"
    else:
        kind = "not a regular file"
    raise ValueError(
        f"{what} {str(path)!r} exists and is {kind}; dode replaces only regular files. Pass "
        "the path of a new or regular file."
    )


def atomic_write(path: str | os.PathLike, write, *, fix: str | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    The file gets the mode a new file gets under the process umask (0644 under umask 022).
    A ``path`` that exists and is not a regular file (a device, a FIFO, a folder, a symbolic
    link) is refused with ``ValueError`` before anything is written (see
    :func:`check_replaceable`). With ``fix``, a write that fails (a full disk) is one
    ``ValueError``: "<path> could not be written (<why>); <fix>" (else the ``OSError``)."""
    try:
        return _atomic_write(path, write)
    except OSError as e:
        if fix is None:
            raise
        raise ValueError(f"{str(path)!r} could not be written ({e.strerror or e}); {fix}") from None


def _atomic_write(path: str | os.PathLike, write) -> Path:
    path = check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        check_replaceable(path)  # something may have appeared there meanwhile
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block finishes, give its contents
    the modes new files and folders get under the process umask (0755/0644 under umask 022)
    and move it onto ``path``, replacing what was there. If the block raises, the temporary
    folder is removed and ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        yield tmp
        mask = _umask()
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def acquire_lock(lock: str | os.PathLike, place: str, user: str, other: str) -> Path:
    """Take the lock file ``lock`` (it holds our pid and host) for the folder it is in; refuse
    a live lock of another process with one ``ValueError``.

    A lock of a process that is gone (same host: a killed run) is taken over with a notice; one
    of another host cannot be checked and is refused (the message says which file to delete).
    A lock of our parent process is ours (Lightning's DDP workers are its children).
    ``place``, ``user`` and ``other`` name the folder, the kind of run and the flag to change in
    the message: "<place> X is in use by another <user> (pid N; ...) ... pass another <other>".
    """
    lock = Path(lock)
    folder = str(lock.parent)
    me = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid_s, _, host = lock.read_text().strip().partition(" ")
                pid = int(pid_s)
            except (OSError, ValueError):
                pid, host = -1, ""
            here = host == socket.gethostname()
            if pid in (os.getpid(), os.getppid()) and here:
                return lock
            if here and pid > 0 and _pid_alive(pid):
                raise ValueError(
                    f"{place} {folder!r} is in use by another {user} (pid {pid}; lock "
                    f"{str(lock)!r}); wait for it to finish, or pass another {other}."
                ) from None
            if not here and host:
                raise ValueError(
                    f"{place} {folder!r} is locked by a {user} on host {host!r} (pid {pid}); "
                    f"wait for it, or delete {str(lock)!r} if that {user} is gone."
                ) from None
            print(f"dode: taking over the stale lock {str(lock)!r} (pid {pid} is gone).",
                  file=sys.stderr)  # fmt: skip
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return lock
    raise ValueError(f"could not take the lock {str(lock)!r}; try again.")


def release_lock(lock: Path | None) -> None:
    """Remove a lock :func:`acquire_lock` took (only if it is still ours)."""
    if lock is None:
        return
    try:
        if lock.read_text().split(" ")[0] == str(os.getpid()):
            lock.unlink()
    except OSError:
        pass
