"""Writing the files a user keeps (configs, reports): checked before the work, written
atomically, and a failed write is one sentence, never a traceback.

>>> check_output_file(Path("doctor.yaml"), force=False)   # before the work  # doctest: +SKIP
>>> write_atomic(Path("doctor.yaml"), text)   # WriteError on a full disk  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError, QuantdoctorError

#: written and removed by :func:`probe_folder`: a disk with less room than this fails before the
#: work rather than after it (a report of a big model with its plots is about this size)
PROBE_BYTES = 1 << 20


class WriteError(QuantdoctorError):
    """A file could not be written (a full disk, a folder made read-only during the run)."""

    def __init__(self, path: Path, err: OSError) -> None:
        self.path = Path(path)
        self.reason = _reason(err)
        super().__init__(f"cannot write {self.path} ({self.reason}); free some space or "
                         "choose another folder, then run again")


class NotSaved(QuantdoctorError):
    """The work is done but its files could not all be written: ``result`` holds what was
    computed (the CLI prints it before this sentence), ``error`` the write that failed."""

    def __init__(self, result: Any, error: QuantdoctorError) -> None:
        self.result = result
        self.error = error
        super().__init__(f"the results could not be saved: {error} (the results are printed "
                         "above)")


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def probe_folder(folder: Path, what: str, fix: str) -> None:
    """Create ``folder`` if needed and write :data:`PROBE_BYTES` into it, or raise
    :class:`ConfigError` in one sentence: ``what`` names the place, ``fix`` says how to mend
    it (a read-only place, a path that is a file, a full disk)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
    except OSError as err:
        raise ConfigError(f"{what} {folder} is not writable ({_reason(err)}); {fix}") from None


def check_output_file(
    path: Path, force: bool, option: str = "-o", example: str = "doctor.yaml"
) -> None:
    """Fail before any work, in one sentence, when ``path`` cannot be written as a file: a
    folder or a device in the way, an existing file without ``force``, a missing, read-only
    or full folder."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give {option} a file name, e.g. "
                          f"{path / example}")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path} is not a regular file; give {option} a file name")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists already; pass --force to overwrite it or choose "
                          f"another {option} file")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{path.parent} is a file, not a folder; fix {option}")
    if not path.parent.is_dir():
        raise ConfigError(f"folder {path.parent} does not exist; create it or fix {option}")
    probe_folder(path.parent, "the folder", f"choose another {option} folder")


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``path`` so that a crash or a full disk never leaves half of it (a temporary
    file beside it, renamed into place); readable by all. Raises :class:`WriteError`."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is for reading
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(path, err) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


__all__ = [
    "PROBE_BYTES", "NotSaved", "WriteError", "check_output_file", "probe_folder", "write_atomic",
]
