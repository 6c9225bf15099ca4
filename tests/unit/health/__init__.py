"""Unit tests of the sidecar health engine: fakes, no sockets."""
