"""The certificate authority's errors.

::

    CAError                     anything the CA refuses or cannot do
    ├── CAExistsError           a CA is already in the directory (save without force)
    ├── CALoadError             a CA file is missing, unreadable or does not match (.path)
    ├── CSRError                a certificate signing request is refused    INVALID_ARGUMENT
    └── InvalidIdentityError    a bad trust domain or SPIFFE ID (also a ValueError)
                                                                            INVALID_ARGUMENT

The two a client can cause carry a ``status_code`` for the servers'
error table (``serving.errors.to_status``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import grpc

__all__ = ["CAError", "CAExistsError", "CALoadError", "CSRError", "InvalidIdentityError"]


class CAError(Exception):
    """The root of the certificate authority's errors; ``str()`` is one line."""


class CAExistsError(CAError):
    """Saving a CA where one already is, without ``force``."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"a CA already exists at {path}; refusing to overwrite it "
            "(every certificate it signed would stop being trusted)"
        )
        self.path = path


class CALoadError(CAError):
    """A CA file is missing, unreadable, not what it should be, or the pair does not match."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot load the CA from {path}: {reason}")
        self.path = path
        self.reason = reason


class CSRError(CAError):
    """A certificate signing request the CA will not sign."""

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INVALID_ARGUMENT


class InvalidIdentityError(CAError, ValueError):
    """A trust domain or SPIFFE ID that is malformed, of an unknown form, or foreign."""

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INVALID_ARGUMENT
