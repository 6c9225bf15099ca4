"""``eco sync run`` starts without gRPC, protobuf or the SDK: the commands'
modules are imported when they run (eco/_lazy.py), and a run between two
stores needs none of the control plane's."""

from __future__ import annotations

import subprocess
import sys


def test_sync_run_starts_without_grpc_or_the_sdk() -> None:
    code = (
        "import sys\n"
        "from eco.cli import main\n"
        "try:\n"
        "    main(['sync', 'run', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('grpc', 'sdk', 'google.protobuf') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "heavy: []" in done.stdout, done.stdout + done.stderr
