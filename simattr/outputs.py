"""Files the package writes, written so that nothing is lost: paths checked before any work, pictures and reports
written whole or not at all, and the JSON-lines output of a many-pair job guarded against a second writer and
against a resume of another job.

* `check_writable(path)`: a SimattrError before any model is loaded if `path` cannot be created (missing folder,
  a directory, no permission).
* `write_atomic(path, write)`: the content goes to a temporary file next to `path`, which replaces `path` only when
  complete (a full disk or a crash leaves the previous file as it was).
* `JobOutput`: `simattr explain-many -o OUT` appends its lines to `OUT.part` (locked: a second writer is refused)
  and moves it onto OUT when the job is done; a killed or failed job leaves OUT as it was and its lines in
  OUT.part, which `--resume` continues. Every line carries the job's `settings_hash` (method, options, model,
  input); a resume of another job is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Callable

from .errors import OutputError, SimattrError

PART = ".part"


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_writable(path: str, what: str = "output") -> None:
    """SimattrError if a file at `path` cannot be written: its folder missing or not writable, or it is a folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise SimattrError(f"{what} {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SimattrError(f"{what} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise SimattrError(f"{what} {path!r} is not writable")


def write_atomic(path, write: Callable, what: str = "output", binary: bool = False) -> None:
    """`write(fh)` into a temporary file beside `path`, then the file replaces `path` (all or nothing)."""
    path = os.fspath(path)
    check_writable(path, what)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise OutputError(f"cannot write {what} {path!r}: {_why(exc)}; nothing was changed there") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def settings_hash(settings: dict) -> str:
    """A short digest of everything that decides a job's lines (values by their JSON form, else their repr)."""
    blob = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


class JobOutput:
    """The JSON-lines output of one many-pair job (see the module's docstring). Use as a context manager:

        with JobOutput(path, hash, resume) as out:   # locked; out.done: indices already written (resume)
            out.write({...})                           # one line, flushed
            out.finish()                               # OUT.part -> OUT

    Leaving the block without `finish()` (an error, Ctrl-C) keeps OUT.part for `--resume`."""

    def __init__(self, path: str, job_hash: str, resume: bool):
        self.path, self.part, self.hash, self.resume = os.fspath(path), os.fspath(path) + PART, job_hash, resume
        self.fh, self.done, self.finished = None, set(), False

    def __enter__(self):
        check_writable(self.path)
        check_writable(self.part)
        try:
            self.fh = open(self.part, "a+b")
        except OSError as exc:
            raise SimattrError(f"cannot write {self.part!r}: {_why(exc)}") from None
        try:
            self._lock()
            self._start()
        except BaseException:
            self.fh.close()
            raise
        return self

    def _lock(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SimattrError(f"another simattr explain-many is writing {self.path!r} (its {self.part!r} is "
                               f"locked); wait for it, or write to another --output") from None

    def _start(self):
        fh = self.fh
        if not self.resume:
            fh.seek(0)
            fh.truncate()
            return
        fh.seek(0)
        data = fh.read()
        source = self.part if data else self.path
        if not data and os.path.exists(self.path):  # a finished (or older) output: continue a copy of it
            try:
                with open(self.path, "rb") as src:
                    data = src.read()
            except OSError as exc:
                raise SimattrError(f"cannot read {self.path!r} to resume: {_why(exc)}") from None
            fh.write(data)
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a killed run
            fh.truncate(end)
        fh.seek(0, os.SEEK_END)
        for n, line in enumerate(data[:end].splitlines(), 1):
            try:
                d = json.loads(line)
                index = int(d["index"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                raise SimattrError(f"{source}:{n}: not a line of simattr explain-many; cannot resume") from None
            if d.get("settings_hash") != self.hash:
                raise SimattrError(
                    f"{source}:{n} was written by another job (other method, options, model or input: settings "
                    f"hash {d.get('settings_hash')!r}, this job's {self.hash!r}); resume with the same settings "
                    f"and input, or write to another --output")
            self.done.add(index)

    def write(self, record: dict) -> None:
        line = json.dumps({**record, "settings_hash": self.hash}) + "\n"
        try:
            self.fh.write(line.encode("utf-8"))
            self.fh.flush()
        except OSError as exc:
            raise OutputError(f"cannot write {self.part!r}: {_why(exc)}; the pairs written before are kept there "
                               f"(--resume continues them), {self.path!r} is unchanged") from None

    def finish(self) -> None:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            os.replace(self.part, self.path)
        except OSError as exc:
            raise OutputError(f"cannot move {self.part!r} onto {self.path!r}: {_why(exc)}; the results are in "
                               f"{self.part!r}") from None
        self.finished = True

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()  # the lock goes with it
        return False

