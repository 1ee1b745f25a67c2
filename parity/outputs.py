"""Where a command writes: output paths checked before any heavy work, one run per output
folder at a time (a lock), and a run's files written as one unit.

* :func:`check_dir` / :func:`check_file`: an ``--out`` that is an existing file or a device
  (``/dev/null``), an ``--html`` that is a folder, a place nothing can be created in -- each a
  :class:`~parity.errors.UsageError` naming the flag, before a model is built.
* :class:`Outputs`: ``with Outputs(folder=..., files=[...]) as out:`` takes the folder's lock
  at once (a second run on the same ``--out`` is refused, not interleaved); writers write into
  ``out.dir`` (a hidden temp folder beside a new target, inside an existing one: the same file
  system either way) and ``out.file(path)`` (a hidden temp file beside it); only when the block ends without an error is everything moved into place,
  with SIGINT and SIGTERM held back for those few renames. On an error, Ctrl-C or SIGTERM the
  temp files are removed and nothing the user had is touched. A new folder is one rename; into
  an existing folder each file is replaced (other files there are kept). A run killed outright
  (SIGKILL, a power cut) leaves its hidden temp folder; the next run on the same ``--out``,
  holding the lock, removes it.

A write that fails for a reason of the disk's (full: ENOSPC, EDQUOT, EFBIG; read-only or
denied: EROFS, EACCES, EPERM) -- while staging or while moving into place -- is a
:class:`~parity.errors.UsageError` naming the output and the errno (:func:`write_error`), with
the temp files removed as on any error.

Folders and files are created with mode 0777/0666 so that the umask applies, as for a plain
``mkdir``/``open``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from parity.errors import ParityError, UsageError

LOCK_SUFFIX = ".parity-lock"
TMP_MARK = ".parity-tmp-"


#: errnos of a disk that cannot take the output: full, or not writable
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
DENIED = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: errnos of a path that is not what a writer needs (a folder where a file goes, ...)
PATHS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOENT, errno.EMLINK,
                   errno.EXDEV, errno.ELOOP})


def errno_of(exc: BaseException | None) -> int | None:
    """The errno of a failed write: an OSError's, or the one safetensors (Rust) puts in its
    message ("I/O error: No space left on device (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if exc is not None and type(exc).__name__ == "SafetensorError":
        m = re.search(r"\(os error (\d+)\)", str(exc))
        return int(m.group(1)) if m else None
    return None


def write_error(exc: BaseException, where: str | Path, flag: str = "") -> UsageError:
    """The one-line error of a write to ``where`` that failed with ``exc`` (see :func:`errno_of`)."""
    n = errno_of(exc) or errno.EIO
    name, text = errno.errorcode.get(n, str(n)), os.strerror(n)
    note = ("free space on that file system, or give a path on another one" if n in FULL else
            "give a path you can write to" if n in DENIED else "give a new path in a folder you can write to")
    return UsageError(f"{flag + ' ' if flag else ''}{where}: cannot write it ({text}, {name}).", note=note)


class Terminated(KeyboardInterrupt):
    """SIGTERM while a command runs with :class:`Outputs` (handled like Ctrl-C: temp files removed)."""


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def _probe_writable(folder: Path, flag: str, target: Path) -> None:
    """Create and remove a hidden entry in ``folder``: the only test that holds for root, ACLs,
    read-only mounts and immutable folders alike."""
    probe = folder / f".parity-probe-{secrets.token_hex(4)}"
    try:
        os.mkdir(probe, 0o700)
    except OSError as exc:
        raise UsageError(f"{flag} {target}: cannot write in '{folder}' ({exc.strerror or exc}).",
                         note="give a folder you can write to") from None
    os.rmdir(probe)


def check_dir(path: str | Path, flag: str = "--out") -> Path:
    """An output folder: absent (it will be made) or a folder, somewhere parity can write."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            kind = "a file" if p.is_file() else "not a folder" if not p.is_symlink() else "a dangling link"
            raise UsageError(f"{flag} {p}: it is {kind}; output goes to a folder.",
                             note="give a new or existing folder")
        _probe_writable(p, flag, p)
        return p
    anc = _existing_ancestor(p)
    if not anc.is_dir():
        raise UsageError(f"{flag} {p}: '{anc}' is not a folder.", note="give a new or existing folder")
    _probe_writable(anc, flag, p)
    return p


def check_file(path: str | Path, flag: str) -> Path:
    """An output file: absent or a regular file (replaced), in a folder parity can write."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {p}: it is a folder; {flag} takes a file path.", note=f"e.g. {flag} {p / 'report.html'}")
    if (p.exists() or p.is_symlink()) and not p.is_file():
        raise UsageError(f"{flag} {p}: it exists and is not a regular file (a device, a socket or a dangling link).",
                         note="give a new file path or a file to replace")
    anc = _existing_ancestor(p.parent)
    if not anc.is_dir():
        raise UsageError(f"{flag} {p}: '{anc}' is not a folder.", note="give a path in a folder")
    _probe_writable(anc, flag, p)
    return p


class _Lock:
    """An exclusive, non-blocking lock on ``<folder>.parity-lock`` beside the output folder."""

    def __init__(self, target: Path, flag: str) -> None:
        self.path = target.parent / f".{target.name}{LOCK_SUFFIX}"
        self.target, self.flag, self.fd = target, flag, -1

    def acquire(self) -> None:
        import fcntl

        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:  # a disk without a free inode, a place made read-only since the check
                raise write_error(exc, self.path, self.flag + " lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UsageError(f"{self.flag} {self.target} is in use by another parity run.",
                                 note=f"wait for it, or give another {self.flag}") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its last holder removed while we waited to lock it
                self.fd = fd
                return
            os.close(fd)
        raise UsageError(f"{self.flag} {self.target}: cannot take its lock {self.path}.",
                         note=f"another parity run keeps replacing it: wait, or give another {self.flag}")

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = -1


class Outputs:
    """A command's output folder and extra files, written as one unit (see the module doc)."""

    def __init__(self, folder: str | Path | None = None, files: list[tuple[str, str | Path | None]] = (),  # type: ignore[assignment]
                 flag: str = "--out") -> None:
        self.target = check_dir(folder, flag) if folder is not None else None
        self.files = {Path(p): check_file(p, f) for f, p in files if p is not None}
        self._flags = {Path(p): f for f, p in files if p is not None}
        if self.target is not None and self.target.resolve() in {f.resolve() for f in self.files}:
            raise UsageError(f"{flag} {self.target} and an output file are the same path.", note="give the HTML page its own path")
        self.flag = flag
        self._tmpdir: Path | None = None
        self._was: Path | None = None  # the temp folder, once committed (for final())
        self._tmpfiles: dict[Path, Path] = {}
        self._made: list[Path] = []  # parent folders this run created (removed again on failure)
        self._lock = _Lock(self.target.absolute(), flag) if self.target is not None else None
        self._old_term: Any = None
        self.committed = False

    # -- the context ---------------------------------------------------------------------------
    def __enter__(self) -> Outputs:
        if self._lock is not None:
            self._mkparents(self.target.absolute().parent)  # type: ignore[union-attr]
            self._lock.acquire()
            self._remove_stale()
        self._old_term = _install_term_handler()
        return self

    def _remove_stale(self) -> None:
        """Temp folders of a run on this target killed before it could clean up (the lock
        held: no live run owns one)."""
        t = self.target.absolute()  # type: ignore[union-attr]
        mine = re.compile(re.escape(f".{t.name}{TMP_MARK}") + r"[0-9a-f]{8}")
        for home in {t.parent, t} if t.is_dir() else {t.parent}:
            with contextlib.suppress(OSError):
                for p in home.iterdir():
                    if mine.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        err, committing, translated = exc, typ is None, None
        try:
            try:
                if typ is None:
                    self.commit()
            except Exception as failed:  # noqa: BLE001 - translated below when the disk is at fault
                err = failed
            if err is not None and not isinstance(err, ParityError):
                translated = self._translate(err, committing)  # while the temp paths are known
        finally:
            self.discard()
            _restore_term_handler(self._old_term)
            if self._lock is not None:
                self._lock.release()
            if not self.committed:
                for d in reversed(self._made):
                    with contextlib.suppress(OSError):
                        d.rmdir()
        if translated is not None:
            raise translated from err
        if err is not exc:
            raise err

    def _translate(self, err: BaseException, committing: bool) -> UsageError | None:
        """A write this run made that failed for the disk's reason, as a UsageError naming the
        output (None: not a write of ours -- e.g. a model file that could not be read)."""
        n = errno_of(err)
        if n is None:
            return None
        name = getattr(err, "filename", None)
        ours = committing or (name is None and n in FULL) or (name is not None and self._owns(Path(name)))
        if not (ours and (n in FULL or n in DENIED or n in PATHS)):
            return None
        for real in self.files:
            if name is not None and f".{real.name}{TMP_MARK}" in Path(name).name:
                return write_error(err, real, self._flags[real])
        if self.target is not None:
            return write_error(err, self.target, self.flag)
        real = next(iter(self.files), None)
        return write_error(err, real, self._flags[real]) if real is not None else None

    def _owns(self, path: Path) -> bool:
        p = path.absolute()
        homes = [t.absolute() for t in self._tmpfiles.values()] + list(self.files)
        if self._tmpdir is not None or self._was is not None:
            homes.append((self._tmpdir or self._was).absolute())  # type: ignore[union-attr]
        if self.target is not None:
            homes.append(self.target.absolute())
        # a path inside the staging or the target, or a hidden temp file a writer made beside one
        return any(p == h.absolute() or p.is_relative_to(h.absolute())
                   or (p.parent == h.absolute().parent and p.name.startswith(".")) for h in homes)

    # -- where writers write -------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        """The temp folder standing in for the output folder (made on first use)."""
        if self.target is None:
            raise RuntimeError("Outputs without a folder")
        if self._tmpdir is None:
            t = self.target.absolute()
            # a new folder: staged beside it and renamed; an existing one (maybe a mount point):
            # staged inside it, on its file system, and its files replaced one by one
            home = t if t.is_dir() else t.parent
            self._tmpdir = home / f".{t.name}{TMP_MARK}{secrets.token_hex(4)}"
            os.mkdir(self._tmpdir, 0o777)
        return self._tmpdir

    def file(self, path: str | Path) -> Path:
        """The temp file standing in for output file ``path`` (one of ``files``)."""
        p = Path(path)
        if p not in self._tmpfiles:
            parent = p.absolute().parent
            self._mkparents(parent)
            self._tmpfiles[p] = parent / f".{p.name}{TMP_MARK}{secrets.token_hex(4)}"
        return self._tmpfiles[p]

    def final(self, path: Path) -> Path:
        """Where a path under :attr:`dir` (or a temp file) ends up."""
        for real, tmp in self._tmpfiles.items():
            if Path(path) == tmp:
                return real
        tmpdir = self._tmpdir or self._was
        if tmpdir is not None and self.target is not None and Path(path).is_relative_to(tmpdir):
            return self.target / Path(path).relative_to(tmpdir)
        return Path(path)

    # -- commit / discard ----------------------------------------------------------------------
    def commit(self) -> None:
        """Move everything into place with SIGINT/SIGTERM held back."""
        with _signals_blocked():
            if self._tmpdir is not None and self.target is not None:
                if not self.target.exists():
                    os.rename(self._tmpdir, self.target)
                else:
                    for f in sorted(self._tmpdir.iterdir()):
                        os.replace(f, self.target / f.name)
                    self._tmpdir.rmdir()
                self._was, self._tmpdir = self._tmpdir, None
            for real, tmp in list(self._tmpfiles.items()):
                if tmp.exists():
                    os.replace(tmp, real)
                del self._tmpfiles[real]
            self.committed = True

    def discard(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        for tmp in self._tmpfiles.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._tmpfiles.clear()

    def _mkparents(self, folder: Path) -> None:
        missing = []
        p = folder
        while not p.exists() and p.parent != p:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o777)
            except FileExistsError:
                continue
            except OSError as exc:
                raise UsageError(f"{self.flag}: cannot create folder '{d}' ({exc.strerror or exc}).",
                                 note="give a path you can write to") from None
            self._made.append(d)


def _on_term(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum}")


def _install_term_handler() -> Any:
    """SIGTERM raises :class:`Terminated` (so ``finally`` blocks clean up); None off the main thread."""
    try:
        return signal.signal(signal.SIGTERM, _on_term)
    except ValueError:  # not the main thread
        return None


def _restore_term_handler(old: Any) -> None:
    if old is not None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

