"""The one error a balancer raises when it has nothing to route to."""

from __future__ import annotations

from sdk._errors import EcoError

__all__ = ["NoEndpointsError"]


class NoEndpointsError(EcoError):
    """``pick()`` found no endpoint it may route to.

    Either the balancer holds no endpoints at all, or every one is CRITICAL
    or ejected and panic routing is disabled (``panic_threshold=0``). An
    expected failure, not misuse: the code is ``UNAVAILABLE``. ``total`` is
    how many endpoints the balancer holds, ``unavailable`` how many of them
    are CRITICAL or ejected.
    """

    def __init__(self, message: str, *, total: int = 0, unavailable: int = 0) -> None:
        super().__init__(message, code="UNAVAILABLE")
        self.total = total
        self.unavailable = unavailable

    @classmethod
    def for_counts(cls, total: int, unavailable: int) -> NoEndpointsError:
        if total == 0:
            return cls("no endpoints to pick from", total=0, unavailable=0)
        return cls(
            f"all {total} endpoints are critical or ejected and panic routing is disabled",
            total=total,
            unavailable=unavailable,
        )
