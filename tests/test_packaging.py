"""Packaging: what a wheel install gets."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_lists_every_package():
    """pyproject.toml names the packages explicitly (simattr.kernels is mapped from kernels/): every package
    directory of simattr must be in that list, or a wheel install misses it."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"simattr." + p.parent.relative_to(ROOT / "simattr").as_posix().replace("/", ".")
             for p in (ROOT / "simattr").rglob("__init__.py") if p.parent != ROOT / "simattr"}
    assert found | {"simattr", "simattr.kernels"} == listed
