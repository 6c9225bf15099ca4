"""The SQLite store killed with SIGKILL while 16 writers write, in a process of its
own: every write it acknowledged is there when the file is opened again."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from controlplane.store import SqliteStore


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "eco.db"


SCRIPT = """
import asyncio, sys
from controlplane.store import SqliteStore

async def main() -> None:
    async with SqliteStore(sys.argv[1]) as store:
        async def writer(w: int) -> None:
            i = 0
            while True:
                rev = await store.put(f"/k/{w}/{i}", str(i).encode())
                print(w, i, rev, flush=True)
                i += 1
        await asyncio.gather(*(writer(w) for w in range(16)))

asyncio.run(main())
"""


async def test_acknowledged_writes_survive_kill_9(path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while len(lines) < 3000:
                line = await proc.stdout.readline()
                if not line:
                    err = await proc.stderr.read()
                    pytest.fail(f"writer exited early: {err.decode(errors='replace')}")
                lines.append(line)
    finally:
        proc.kill()  # SIGKILL: no close(), no flush, no atexit
        await proc.wait()
    assert proc.returncode == -9
    # Whatever was printed before the kill was acknowledged too.
    rest = await proc.stdout.read()
    lines += [line for line in rest.splitlines(keepends=True) if line.endswith(b"\n")]
    acked = [tuple(int(x) for x in line.split()) for line in lines]

    async with SqliteStore(path) as store:
        assert store.revision >= max(rev for _, _, rev in acked)
        for w, i, rev in acked:
            kv = await store.get(f"/k/{w}/{i}")
            assert kv is not None, f"acknowledged key /k/{w}/{i} (revision {rev}) was lost"
            assert kv.value == str(i).encode() and kv.mod_revision == rev
        # The store goes on from where it was.
        assert await store.put("/after", b"") == store.revision
