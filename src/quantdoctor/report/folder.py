"""The report folder of one run: checked writable before any work, locked against a second
run writing into it at the same time, and never losing an earlier report.

Rules (README "The report"):

- a run's first write moves an earlier ``findings.json`` / ``index.html`` of the folder to
  ``findings.prev.json`` / ``index.prev.html`` (one generation kept: an ``evaluate`` after a
  ``diagnose`` does not silently replace the fuller report);
- a run that finished no step (it failed at setup) writes nothing over an earlier report: the
  earlier report stays as it was, and the error is on the console;
- a second run into a folder that a live run holds is refused in one sentence (a stale lock,
  whose process is gone, is taken over).

>>> folder = ReportFolder(Path("report"))            # doctest: +SKIP
>>> folder.check_writable(); folder.lock()           # before the expensive work
>>> if folder.may_write(steps_done):                 # before each write
...     folder.before_write(); report.write_json(folder.path)
>>> folder.unlock()
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from ..errors import QuantdoctorError
from ..files import probe_folder

LOCK = ".quantdoctor.lock"
FILES = (("findings.json", "findings.prev.json"), ("index.html", "index.prev.html"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ReportFolder:
    """Where one run writes findings.json and index.html (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._locked = False
        self._rotated = False

    def check_writable(self) -> None:
        """Create the folder and write a probe file, or raise :class:`ConfigError` in one
        sentence (a read-only place, a path that is a file, a full disk)."""
        probe_folder(self.path, "the report folder",
                     "set --report-dir or report.dir to a folder you can write")

    def lock(self) -> None:
        """Hold the folder for this process, or refuse when a live run holds it."""
        path = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise QuantdoctorError(
                        f"another quantdoctor run (process {pid}) is writing the report in "
                        f"{self.path}; wait for it to finish, or set --report-dir to another "
                        "folder"
                    ) from None
                path.unlink(missing_ok=True)  # stale, or this process's own
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._locked = True
            atexit.register(self.unlock)  # a crash or Ctrl-C never leaves it held
            return

    def unlock(self) -> None:
        if self._locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self._locked = False

    def may_write(self, steps_done: int) -> bool:
        """Whether this run may write now: not over an earlier report before it has finished a
        step."""
        return steps_done > 0 or self._rotated or not (self.path / FILES[0][0]).is_file()

    def before_write(self) -> None:
        """On this run's first write: keep the earlier report as ``*.prev.*``."""
        if self._rotated:
            return
        self._rotated = True
        for name, prev in FILES:
            if (self.path / name).is_file():
                os.replace(self.path / name, self.path / prev)
