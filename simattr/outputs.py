"""Files the package writes, written so that nothing is lost: paths checked before any work, pictures and reports
written whole or not at all, and the JSON-lines output of a many-pair job guarded against a second writer and
against a resume of another job.

* `check_writable(path)`: a SimattrError before any model is loaded if `path` cannot be created (missing folder,
  a directory, no permission).
* `write_atomic(path, write)`: the content goes to a temporary file next to `path`, which replaces `path` only when
  complete (a full disk or a crash leaves the previous file as it was).
* `PartsOutput`: `simattr explain-many -o FOLDER` writes Parquet part files, each whole or absent (temporary
  file, fsync, rename), one lock per rank, resume by id.
* `JobOutput`: `simattr explain-many -o OUT.jsonl` appends its lines to `OUT.part` (locked: a second writer is refused)
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
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise SimattrError(f"{what} must be a file name (a string or a path), got {type(path).__name__}")
    path = os.fspath(path)
    if not path.strip():
        raise SimattrError(f"{what}: the file name is empty")
    if os.path.isdir(path):
        raise SimattrError(f"{what} {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SimattrError(f"{what} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise SimattrError(f"{what} {path!r} is not writable")


def write_atomic(path, write: Callable, what: str = "output", binary: bool = False) -> None:
    """`write(fh)` into a temporary file beside `path`, then the file replaces `path` (all or nothing)."""
    check_writable(path, what)
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes it 0600: give it what a plain open() would
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise OutputError(f"cannot write {what} {path!r}: {_why(exc)}; nothing was changed there") from None
    except BaseException:
        _remove(tmp)
        raise


def _file_mode(path: str) -> int:
    """The mode of the file being replaced, else what open() would give a new one (0666 less the umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def lock_exclusive(fh, refusal: str) -> None:
    """An exclusive lock on the open file `fh` (released when it is closed, also by a killed process); a
    SimattrError saying `refusal` if another process holds it. No lock where the system has none (not POSIX)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise SimattrError(refusal) from None


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

        with JobOutput(path, hash, resume) as out:   # locked; out.done: ids already written (resume)
            out.write(rows)                            # one line per row, flushed
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
        lock_exclusive(self.fh, f"another simattr explain-many is writing {self.path!r} (its {self.part!r} is "
                                f"locked); wait for it, or write to another --output")

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
                index = d["id"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                raise SimattrError(f"{source}:{n}: not a line of simattr explain-many; cannot resume") from None
            if d.get("settings_hash") != self.hash:
                raise SimattrError(
                    f"{source}:{n} was written by another job (other method, options, model or input: settings "
                    f"hash {d.get('settings_hash')!r}, this job's {self.hash!r}); resume with the same settings "
                    f"and input, or write to another --output")
            self.done.add(index)

    def write(self, rows: list) -> None:
        """Result rows (`simattr.results`) as JSON lines, flushed."""
        data = "".join(json.dumps({**r, "settings_hash": self.hash}) + "\n" for r in rows).encode("utf-8")
        try:
            self.fh.write(data)
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



class PartsOutput:
    """A directory of Parquet part files, the output of one many-pair job (or of one rank of it):

        with PartsOutput(folder, hash, resume, make_table, rank=0, metadata={...}) as out:  # out.done: ids
            out.write(rows)                                                   # one part, atomically

    Each part is written to a temporary file in the folder, fsynced and renamed to
    `part-r{rank:04d}-{n:06d}.parquet`, so a part is either whole or absent: a job killed at any moment loses at
    most the part it was making, and `--resume` makes exactly its pairs again. A folder that already holds parts
    is refused without `resume` (nothing is overwritten); with it, every part must carry this job's settings hash
    (in its metadata). Ranks lock their own `.lock-r{rank}`, so a second writer of the same rank is refused."""

    def __init__(self, folder: str, job_hash: str, resume: bool, make_table: Callable, rank: int = 0,
                 metadata: dict = None):
        """make_table(rows, metadata) -> a pyarrow Table (`simattr.results.to_table`)."""
        self.folder, self.hash, self.resume, self.rank = os.fspath(folder), job_hash, resume, int(rank)
        self.metadata, self.make_table = dict(metadata or {}, settings_hash=job_hash), make_table
        self.done, self.lock, self.next = set(), None, 0

    def __enter__(self):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise SimattrError("a Parquet output needs pyarrow: pip install 'simattr[data]' (or write a .jsonl "
                               "file)") from None
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise SimattrError(f"--output {self.folder!r} is a file; a Parquet output is a folder (or name a "
                               f".jsonl file)")
        if os.path.isdir(self.folder):
            if not os.access(self.folder, os.W_OK):
                raise SimattrError(f"--output {self.folder!r} is not writable")
        else:
            check_writable(self.folder, "--output")
        os.makedirs(self.folder, exist_ok=True)
        self.lock = open(os.path.join(self.folder, f".lock-r{self.rank}"), "a+b")
        try:
            self._lock()
            self._scan()
        except BaseException:
            self.lock.close()
            raise
        return self

    def _lock(self):
        lock_exclusive(self.lock, f"another simattr explain-many is writing rank {self.rank} of {self.folder!r}; "
                                  f"wait for it, or write to another --output")

    def parts(self) -> list:
        return sorted(f for f in os.listdir(self.folder) if f.startswith("part-") and f.endswith(".parquet"))

    def _scan(self):
        import pyarrow.parquet as pq
        for f in os.listdir(self.folder):  # what a killed run of this rank was writing
            if f.startswith(f".tmp-r{self.rank}-"):
                _remove(os.path.join(self.folder, f))
        parts = self.parts()
        if parts and not self.resume:
            raise SimattrError(f"--output {self.folder!r} already holds {len(parts)} part file(s) of a job; "
                               f"--resume continues it, or write to another folder")
        mine = f"part-r{self.rank:04d}-"
        for f in parts:
            path = os.path.join(self.folder, f)
            try:
                meta = pq.read_schema(path).metadata or {}
                ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
            except Exception as exc:  # noqa: BLE001
                raise SimattrError(f"{path}: not a part of simattr explain-many ({exc}); cannot resume") from None
            found = json.loads(meta.get(b"simattr", b"{}")).get("settings_hash")
            if found != self.hash:
                raise SimattrError(f"{path} was written by another job (other method, options, model or input: "
                                   f"settings hash {found!r}, this job's {self.hash!r}); resume with the same "
                                   f"settings and input, or write to another --output")
            self.done.update(ids)
            if f.startswith(mine):
                self.next = max(self.next, int(f[len(mine):len(mine) + 6]) + 1)

    def write(self, rows: list) -> str:
        """One part of `rows` (with this job's settings in its metadata); returns its path."""
        import pyarrow.parquet as pq
        if not rows:
            return ""
        table = self.make_table([dict(r, settings_hash=self.hash) for r in rows], self.metadata)
        name = f"part-r{self.rank:04d}-{self.next:06d}.parquet"
        tmp = os.path.join(self.folder, f".tmp-r{self.rank}-{self.next:06d}.parquet")
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, os.path.join(self.folder, name))
        except OSError as exc:
            _remove(tmp)
            raise OutputError(f"cannot write a part to {self.folder!r}: {_why(exc)}; the parts written before are "
                              f"kept (--resume continues them)") from None
        self.next += 1
        self.done.update(r["id"] for r in rows)
        return name

    def finish(self) -> None:
        """Nothing to move: every part is in place when written."""

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.close()
        return False
