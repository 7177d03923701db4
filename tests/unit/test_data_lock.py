"""One serve per data_dir: the lock is exclusive across processes and names its holder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.data_lock import LOCK_FILE_NAME, DataDirInUse, DataLock, DataLockError

# A second process that takes the lock, says so, and holds it until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from gateway.data_lock import DataLock
with DataLock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_second_process_is_refused_with_the_holders_pid(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(DataDirInUse) as refused:
        DataLock(tmp_path).acquire()
    assert refused.value.pid == holder.pid
    assert str(refused.value) == (
        f"data_dir {tmp_path.resolve()} is in use by mailgate PID {holder.pid}; stop it first"
    )


def test_lock_is_free_again_when_the_holder_exits(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    with DataLock(tmp_path) as lock:
        assert lock.held
        assert (tmp_path / LOCK_FILE_NAME).read_text().strip() == str(os.getpid())


def test_lock_is_free_again_when_the_holder_is_killed(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.kill()
    holder.wait(timeout=30)
    with DataLock(tmp_path):
        pass


def test_release_lets_the_next_one_in(tmp_path: Path) -> None:
    first = DataLock(tmp_path)
    first.acquire()
    with pytest.raises(DataDirInUse):
        DataLock(tmp_path).acquire()  # flock is per open file, so this conflicts in-process too
    first.release()
    assert (tmp_path / LOCK_FILE_NAME).read_text() == ""
    with DataLock(tmp_path):
        pass


def test_missing_data_dir_is_named_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    with pytest.raises(DataLockError, match=f"data_dir {missing} does not exist"):
        DataLock(missing).acquire()
    assert not missing.exists()
