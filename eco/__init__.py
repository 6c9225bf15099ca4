"""The ``eco`` command line; the entry point is :func:`eco.cli.main`."""

import os

# gRPC's core logs every failed TLS handshake (a client with the wrong CA, a
# plaintext client on a TLS port) to stderr at INFO, several lines a second
# while it retries; the command reports such failures itself, in one line.
# Read when gRPC is first imported, hence here; the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
