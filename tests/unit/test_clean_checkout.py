"""A test run must leave the checkout clean: nothing it writes may be a tracked file."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.faults import ledger

ROOT = ledger.ROOT


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.fixture(autouse=True)
def _needs_git() -> None:
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        pytest.fail("these checks need git and a git checkout (they guard `git status` after the suite)")


def test_fault_ledger_writes_an_untracked_ignored_file() -> None:
    path = str(ledger.RESULTS.relative_to(ROOT))
    assert _git("ls-files", "--error-unmatch", path).returncode != 0, f"a test run would rewrite tracked {path}"
    assert _git("check-ignore", "-q", path).returncode == 0, f"{path} is not gitignored: it would show in git status"


def test_committed_fault_record_is_kept() -> None:
    path = str(ledger.COMMITTED.relative_to(ROOT))
    assert _git("ls-files", "--error-unmatch", path).returncode == 0, f"{path} is the committed record docs quote"
