"""Shared fixtures: a fresh workspace per test and a runner for fresh Python processes."""

import os
import subprocess
import sys
import textwrap

import pytest

import dbzero as db0

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "db")


@pytest.fixture
def db(root):
    """An initialised workspace with prefix "test" current and autocommit off."""
    db0.init(root, prefix="test", autocommit=False)
    try:
        yield root
    finally:
        db0.close()


@pytest.fixture(autouse=True)
def _always_close():
    yield
    db0.close()


def run_python(code: str, *args: str, timeout: float = 60, check: bool = True,
               cwd: str = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the repo on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def fresh():
    return run_python
