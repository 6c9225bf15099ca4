"""``open_broker(url, data_dir)``: the one place a bus URL becomes a backend."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from bus._errors import BusError
from bus._protocol import MAX_PAYLOAD, Broker

__all__ = ["open_broker"]


def open_broker(url: str, data_dir: Path | None, *, max_payload: int = MAX_PAYLOAD) -> Broker:
    """An unstarted broker for ``url``.

    ``embedded://`` (or ``embedded``): the built-in broker; durable streams
    live under ``data_dir`` (None: in memory, lost on exit — for a control
    plane on ``memory://``). ``nats://HOST:PORT[,HOST:PORT…]``: a NATS
    server or cluster, JetStream for durable streams. Raises BusError
    (field ``bus``) for anything else.
    """
    scheme, sep, rest = url.strip().partition("://")
    if url.strip() == "embedded" or (sep and scheme == "embedded" and not rest):
        module: Any = importlib.import_module("bus.embedded")
        broker: Broker = module.EmbeddedBroker(data_dir, max_payload=max_payload)
        return broker
    if sep and scheme in ("nats", "tls"):
        servers = [f"{scheme}://{s.strip()}" for s in rest.split(",") if s.strip()]
        if not servers:
            raise BusError(f"{url!r}: name at least one NATS server", field="bus")
        module = importlib.import_module("bus.nats")
        broker = module.NatsBroker(servers, max_payload=max_payload)
        return broker
    raise BusError(
        f"{url!r} is not a bus URL: use embedded:// or nats://HOST:PORT[,HOST:PORT...]",
        field="bus",
    )
