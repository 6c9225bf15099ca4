"""Runs gcp-storage-emulator (``python tests/harness/gcs_emulator.py start …``,
the same arguments as its own command) with two changes for a test run:

- a deeper listen queue: it serves one connection at a time on
  ``http.server.HTTPServer``, whose listen backlog is 5, so a client with
  more requests in flight than that (the connectors run 16 transfers and
  more at once) sees connections reset; with 1,024 they wait their turn, as
  at a busy server;
- in memory (``-M``), no index dump after every change: it writes the JSON
  of every object of every bucket into its in-memory filesystem on each
  write, which makes the n-th upload of a session cost O(n) (2,500 small
  objects took a minute). The index is only read back when it starts.

What it answers to requests is unchanged.
"""

from __future__ import annotations

import http.server
import sys

from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.storage import Storage

http.server.HTTPServer.request_queue_size = 1024
_write_index = Storage._write_config_to_file


def _write_index_unless_in_memory(self: Storage) -> None:
    if not self._use_memory_fs:
        _write_index(self)
    # In memory: nothing reads the index back while the process runs.


Storage._write_config_to_file = _write_index_unless_in_memory

if __name__ == "__main__":
    main(sys.argv[1:])
