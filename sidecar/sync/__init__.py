"""Data synchronisation (``eco sync``): connectors for filesystems, object
stores and SFTP, and the engine that keeps two of them in step (copy, mirror,
bisync) against state kept per job and per side. See docs/sync.md."""
