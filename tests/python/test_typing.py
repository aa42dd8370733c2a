"""The package is typed: `mypy --strict` passes on its sources (with the extension's stub,
`_native.pyi`) and on a user's program (typed_program.py), which also runs against real
nodes; the installed wheel ships the stub and `py.typed`. tests/python_package.rs runs
this with pytest, the wheel on PYTHONPATH, FIXTURES and DAEMON_API (serving `tiny`) set.

mypy checks for Python 3.10, the oldest it targets (the package runs on 3.9 and up), so
a 3.11-only API in the sources fails here too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ipfs_accelerate
import ipfs_accelerate_py

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "bin/python/python/ipfs_accelerate", ROOT / "bin/python/python/ipfs_accelerate_py"]
PROGRAM = Path(__file__).with_name("typed_program.py")
#: Longest one mypy run or the program may take.
TIMEOUT = 300


def mypy(tmp_path: Path, program: Path) -> subprocess.CompletedProcess[str]:
    """`mypy --strict` on the package's sources and `program`, caching under tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    command = [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10"]
    command += ["--cache-dir", str(tmp_path / "mypy-cache"), "--no-color-output"]
    command += [str(p) for p in [*SOURCES, program]]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def test_package_and_program_pass_mypy_strict(tmp_path: Path) -> None:
    out = mypy(tmp_path, PROGRAM)
    assert out.returncode == 0, out.stdout + out.stderr
    # Every module of both packages, the stub and the program were checked.
    assert "Success: no issues found in 7 source files" in out.stdout, out.stdout


def test_a_type_error_fails_the_check(tmp_path: Path) -> None:
    text = PROGRAM.read_text(encoding="utf-8")
    right = "data: bytes = await node.cat("
    assert right in text
    wrong = tmp_path / "wrong_program.py"
    wrong.write_text(text.replace(right, "data: str = await node.cat("), encoding="utf-8")
    out = mypy(tmp_path, wrong)
    assert out.returncode == 1, out.stdout + out.stderr
    line = text[: text.index(right)].count("\n") + 1
    expected = (
        f'wrong_program.py:{line}: error: Incompatible types in assignment '
        '(expression has type "bytes", variable has type "str")'
    )
    assert expected in out.stdout, out.stdout


def test_the_installed_wheel_ships_its_types() -> None:
    for package, files in [
        (ipfs_accelerate, ["py.typed", "_native.pyi"]),
        (ipfs_accelerate_py, ["py.typed"]),
    ]:
        folder = Path(package.__file__).parent
        for name in files:
            assert (folder / name).is_file(), f"{name} missing from {folder}"


def test_the_typed_program_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(PROGRAM), os.environ["FIXTURES"], os.environ["DAEMON_API"]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "typed program ok" in out.stdout, out.stdout + out.stderr
