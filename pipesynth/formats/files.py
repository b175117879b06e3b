"""Reading and writing the project's files: one place for how a file is read and how it is replaced.

Reading takes at most `MAX_FILE_BYTES` of UTF-8 text, so a huge or binary
file is refused in one line instead of filling memory or decoding garbage.
Writing (docs/design.md section 10) goes through a temporary file in the
target's folder, flushed to disk and renamed over the target: a failed write
leaves the old file whole. The new file keeps the mode of the file it
replaces (or takes the umask's for a new one); a symlink is followed, so the
file it points to is replaced and the link stays. A device, pipe or socket
(`-o /dev/stdout`, `/dev/null`) is written in place, never replaced.
`check_writable` finds an
unusable output before any work starts; `rescue=True` saves what could not
be written next to the target, or in the temporary folder, and names it in
the error, so long work (a search, a training run) is never lost.

A temporary file is named `.NAME.PID.XXXXXXXX.tmp` (the writer's process id,
then mkstemp's eight random characters). A writer killed outright (SIGKILL)
leaves its temporary file behind; the next write of NAME removes every file
of exactly that form whose process is no longer running on this machine,
and nothing else (another writer's file, still being written, is kept).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from pipesynth.errors import PipesynthError, WriteError

#: Largest file any reader accepts (a schedule of about two million passes).
MAX_FILE_BYTES = 64 * 2**20


def read_text(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> str:
    """The file's text; refuses files over `limit` bytes and bytes that are not UTF-8 (a leading BOM is skipped)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise PipesynthError(f"{path}: cannot read ({reason(err)})") from None
    if len(data) > limit:
        raise PipesynthError(f"{path}: larger than {limit / 2**20:g} MiB, the most pipesynth reads")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PipesynthError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); is it a binary file?"
        ) from None


def reason(err: OSError) -> str:
    """`No space left on device`: the system's words for an OSError."""
    return err.strerror or str(err)


def output_path(path: str | os.PathLike[str]) -> Path:
    """Where a write to `path` lands: the file a symlink points to (followed), never a folder."""
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise PipesynthError(f"{path}: is a folder; give a file name")
    return target


def is_stream(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a device, pipe or socket (links followed), or under /dev or /proc (`/dev/stdout`
    redirected to a file stays the shell's file): written in place, never replaced."""
    if os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_writable(path: str | os.PathLike[str] | None) -> None:
    """Refuse (exit 2) an output that cannot be written, before the work that would fill it.

    Creates and removes an empty file in the target's folder (or its nearest
    existing parent, which the write will create the rest under).
    """
    if path is None:
        return
    if is_stream(path):
        if not os.path.exists(path) or not os.access(path, os.W_OK):
            why = "Permission denied" if os.path.exists(path) else "No such file or directory"
            raise PipesynthError(f"{path}: cannot write ({why})")
        return
    target = output_path(path)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        Path(write_new_file(folder, target.name, b"", 0o600)).unlink()
    except OSError as err:
        raise PipesynthError(f"{path}: cannot write ({reason(err)})") from None


def write_new_file(folder: Path, name: str, data: bytes, mode: int) -> str:
    """A new hidden file in `folder` holding `data`, flushed to disk; its path.

    The only place bytes reach the disk: tests replace it to simulate a full
    disk or a read-only folder.
    """
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


#: The part of a temporary file's name after `.NAME.`: the writer's process id, mkstemp's random characters.
TEMPORARY_TAIL = re.compile(r"(\d+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary files of `target` (`.NAME.PID.XXXXXXXX.tmp` in its folder) whose writer is no
    longer running: what a writer killed outright left behind. Returns the files removed.

    Only that exact form is touched, and only when process PID does not exist
    here (a live writer of the same output keeps its file); a file that cannot
    be removed is left, since the write itself does not need it gone.
    """
    head = f".{target.name}."
    removed = []
    try:
        names = [e.name for e in os.scandir(target.parent) if e.name.startswith(head)]
    except OSError:
        return removed
    for name in names:
        tail = TEMPORARY_TAIL.fullmatch(name[len(head) :])
        if tail is None or _running(int(tail.group(1))):
            continue
        stale = target.parent / name
        try:
            if stale.is_symlink() or not stale.is_file():
                continue
            stale.unlink()
        except OSError:
            continue
        removed.append(stale)
    return removed


def _running(pid: int) -> bool:
    """Whether process `pid` exists on this machine (another user's included)."""
    if pid <= 0:
        return True  # not a process id we write: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, OSError):  # another user's process (EPERM), or no process id at all
        return True
    return True


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, rescue: bool = False) -> Path:
    """Replace `path` whole with `data` (see the module docstring); return the file written.

    A failure raises WriteError (exit 1); with `rescue`, the data is first
    saved elsewhere and the error names where.
    """
    stream = is_stream(path)
    target = Path(path) if stream else output_path(path)
    try:
        if stream:
            with open(path, "wb") as f:
                f.write(data)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(target)
            tmp = write_new_file(target.parent, target.name, data, _mode_for(target))
            try:
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except OSError as err:
        message = f"{path}: cannot write ({reason(err)})"
        if rescue:
            message += keep_elsewhere(target.name, data, [] if stream else [target.parent])
        raise WriteError(message) from None
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str, *, rescue: bool = False) -> Path:
    """`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"), rescue=rescue)


def _mode_for(target: Path) -> int:
    """The permission bits of the file being replaced, or those the umask gives a new file."""
    try:
        return target.stat().st_mode & 0o777  # not setuid, setgid or sticky: a new file does not inherit those
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (no race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def keep_elsewhere(name: str, data: bytes, folders: list[Path]) -> str:
    """Save `data` as `name.rescued-XXXX` in the first of `folders` (then the temporary folder) that
    takes it; the sentence that says where, for an error message."""
    errors = []
    for folder in [*folders, Path(tempfile.gettempdir())]:
        try:
            kept = Path(write_new_file(folder, name, data, 0o600))
            unique = kept.name.removesuffix(".tmp").rsplit(".", 1)[1]
            saved = folder / f"{name}.rescued-{unique}"
            try:
                os.replace(kept, saved)
            except OSError:
                kept.unlink(missing_ok=True)
                raise
        except OSError as err:
            errors.append(reason(err))
            continue
        return f"; the result is saved in {saved}"
    return f"; the result could not be saved elsewhere either ({errors[-1]})"
