"""The decision write-ahead journal on its own: rows survive a SIGKILL of the process that
wrote them, a live process's segment is never taken, resolved segments go away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from store.wal import DecisionWal


def _row(i: int) -> dict:
    return {"id": f"r{i}", "created_at": datetime.now(UTC), "status": 200, "model": "\x00x"}


def test_resolved_rows_leave_no_file(tmp_path: Path) -> None:
    wal = DecisionWal(tmp_path, rotate_rows=3)
    for i in range(7):
        wal.append(_row(i))
    assert wal.unresolved == 7 and len(list(tmp_path.iterdir())) == 3  # rotated by 3 rows
    wal.resolve([f"r{i}" for i in range(7)])
    assert wal.unresolved == 0 and list(tmp_path.iterdir()) == []
    wal.append(_row(8))  # a new segment after the old ones went
    wal.close()
    assert len(list(tmp_path.iterdir())) == 1  # unresolved at close: kept for the replay


def test_a_killed_writer_leaves_its_rows_to_the_next_process(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, signal, sys
        from datetime import UTC, datetime
        from store.wal import DecisionWal
        wal = DecisionWal({str(tmp_path)!r})
        for i in range(50):
            wal.append({{"id": f"k{{i}}", "created_at": datetime.now(UTC), "status": 200}})
        wal.resolve(["k0", "k1"])
        print("written", flush=True)
        sys.stdin.readline()
    """)
    live = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert live.stdout is not None and live.stdout.readline().strip() == "written"
    me = DecisionWal(tmp_path)
    assert me.claim_orphans() == []  # its owner is alive: not an orphan
    os.kill(live.pid, signal.SIGKILL)
    live.wait(10)
    claimed = me.claim_orphans()
    assert len(claimed) == 1
    fd, path = claimed[0]
    rows = DecisionWal.read(path)
    # Resolution is in memory only: all 50 come back (the replay skips ids already stored).
    assert [r["id"] for r in rows] == [f"k{i}" for i in range(50)]
    assert isinstance(rows[0]["created_at"], datetime)
    assert DecisionWal(tmp_path).claim_orphans() == []  # claimed: no second replayer
    DecisionWal.release(fd, path, done=True)
    assert list(tmp_path.iterdir()) == []


def test_a_replay_that_died_is_claimed_again(tmp_path: Path) -> None:
    wal = DecisionWal(tmp_path)
    wal.append(_row(1))
    wal.close()  # unresolved: stays
    first = DecisionWal(tmp_path).claim_orphans()
    assert len(first) == 1
    fd, path = first[0]
    DecisionWal.release(fd, path, done=False)  # "died" before the rows were safe
    again = DecisionWal(tmp_path).claim_orphans()
    assert len(again) == 1 and DecisionWal.read(again[0][1])[0]["id"] == "r1"
    assert DecisionWal.read(again[0][1])[0]["model"] == "\x00x"


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    wal = DecisionWal(tmp_path)
    wal.append(_row(1))
    wal.close()
    seg = next(tmp_path.iterdir())
    with seg.open("ab") as f:
        f.write(b'{"id": "torn", "crea')  # killed in the middle of a write
    fd, path = DecisionWal(tmp_path).claim_orphans()[0]
    assert [r["id"] for r in DecisionWal.read(path)] == ["r1"]
    os.close(fd)
