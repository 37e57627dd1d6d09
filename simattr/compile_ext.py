"""The compiled extension for every install: when `simattr._C` was not built at install time (pip's default build
isolation hides torch from setup.py, so a plain `pip install -e .` builds none), it is compiled on first use with
`torch.utils.cpp_extension.load` and ninja into a per-user cache, keyed by the torch version, the compiler flags
and the sources' hash, and loaded from there by every later process.

- where: `$SIMATTR_EXT_CACHE`, else `$XDG_CACHE_HOME/simattr/ext`, else `~/.cache/simattr/ext`;
- once: a file lock per key, so parallel processes (torchrun ranks, Ray actors) build it once and the others wait
  and load it;
- a one-time message (logging, logger "simattr", level WARNING: shown on stderr unless configured) while it compiles (about a minute on two cores);
- no compiler, no ninja, no sources (a wheel without csrc/), or a failed build: the PyTorch paths run, and
  `simattr info` says why (`Status.reason`). SIMATTR_NO_JIT=1 turns the compilation off.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

log = logging.getLogger("simattr")
FLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def sources_dir() -> Optional[Path]:
    """csrc/ of this checkout (an editable install or a source tree), or None (a wheel ships no sources)."""
    here = Path(__file__).resolve().parent.parent / "csrc"
    return here if (here / "cpu").is_dir() else None


def cache_root() -> Path:
    if os.environ.get("SIMATTR_EXT_CACHE"):
        return Path(os.environ["SIMATTR_EXT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "simattr" / "ext"


def cache_key(sources: list) -> str:
    """torch version, Python ABI, flags and the sources' contents: any change is another build."""
    import torch
    h = hashlib.sha256()
    h.update(f"{torch.__version__}|{sys.version_info[:2]}|{FLAGS}|{LDFLAGS}".encode())
    for path in sources:
        h.update(Path(path).name.encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def load() -> Tuple[Optional[object], str, str]:
    """(module or None, state, reason): state "cached" (built before, loaded), "compiled now", or "not built"."""
    if os.environ.get("SIMATTR_NO_JIT") == "1":
        return None, "not built", "not built, and compiling on first use is off (SIMATTR_NO_JIT=1)"
    src = sources_dir()
    if src is None:
        return None, "not built", ("not built, and this install has no C++ sources to compile (install from a "
                                     "source checkout, or pip install --no-build-isolation .)")
    sources = sorted(glob.glob(str(src / "cpu" / "*.cpp")))
    header_dirs = [str(src), str(src / "cuda")]
    try:
        key = cache_key(sources + sorted(glob.glob(str(src / "cpu" / "*.h"))) + sorted(glob.glob(str(src / "*.h"))))
        folder = cache_root() / key
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return None, "not built", f"not built, and the cache folder cannot be made ({exc})"
    name = f"simattr_C_{key}"
    done = folder / "built"
    fresh = not done.exists()
    try:
        with open(folder / "simattr.lock", "a+b") as lock:  # not "lock": cpp_extension's own baton file
            _wait_for_lock(lock)
            fresh = not done.exists()  # another process may have built it while this one waited
            if fresh:
                log.warning("simattr: compiling the C++ kernels once for torch %s into %s (about a minute; later "
                            "runs load them)", _torch_version(), folder)
            from torch.utils.cpp_extension import load as load_extension
            module = load_extension(name=name, sources=sources, extra_cflags=list(FLAGS),
                                    extra_ldflags=list(LDFLAGS), extra_include_paths=header_dirs,
                                    build_directory=str(folder), verbose=False)
            done.touch()
    except Exception as exc:  # noqa: BLE001  (no compiler, no ninja, a failed build: the PyTorch paths run)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, "not built", f"not built, and compiling it failed ({first[:200]}); the PyTorch paths run"
    return module, ("compiled now" if fresh else "cached"), f"{'compiled now' if fresh else 'cached'} in {folder}"


def _wait_for_lock(fh) -> None:
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # held until the file closes (also when a process dies)


def _torch_version() -> str:
    import torch
    return torch.__version__
