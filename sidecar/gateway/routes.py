"""The routes stored in the control plane, followed over ``RouteService/WatchRoutes``.

A :class:`RouteWatcher` keeps every stored route (of one group, when the
configuration names one) by name, resuming from the last revision it saw
after any disconnect (a snapshot when the control plane no longer holds the
changes since). Each time its set is whole and has changed (the end of a
snapshot, then each batch of changes) it awaits ``on_routes`` with the specs.
The last set is kept in ``data_dir`` (:data:`ROUTES_FILE`), so that a gateway
restarted while the control plane is away serves the routes it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from ecosystem.v1 import gateway_pb2
from ecosystem.v1 import registry_pb2 as pb

import sdk
from sdk import ChannelFactory
from sdk.lowlevel import Backoff, Transport, struct_to_dict

__all__ = ["ROUTES_FILE", "RouteWatcher", "load_routes"]

logger = logging.getLogger(__name__)

#: The last set of stored routes, in ``data_dir``.
ROUTES_FILE = "controlplane-routes.json"

Specs = dict[str, dict[str, Any]]


def load_routes(data_dir: Path) -> tuple[Specs, int, str]:
    """The routes kept from the last run (specs by name), their revision and store id."""
    path = data_dir / ROUTES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        specs = {str(name): dict(spec) for name, spec in data["routes"].items()}
        return specs, int(data["revision"]), str(data["store_id"])
    except FileNotFoundError:
        return {}, 0, ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("%s: cannot read the kept routes (%s); starting without them", path, exc)
        return {}, 0, ""


class RouteWatcher:
    """Follows the stored routes (see the module docstring); ``start()``/``close()``."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        on_routes: Callable[[Mapping[str, dict[str, Any]]], Awaitable[None]],
        *,
        group: str = "",
        token: str = "",
        channel_factory: ChannelFactory | None = None,
        data_dir: Path | None = None,
        routes: Specs | None = None,
        revision: int = 0,
        store_id: str = "",
    ) -> None:
        self._transport = Transport(
            addresses, timeout=10.0, channel_factory=channel_factory, token=token
        )
        self._on_routes = on_routes
        self._group = group
        self._data_dir = data_dir
        self.routes: Specs = dict(routes or {})
        self.revision = revision
        self.store_id = store_id
        self.connected = False
        self.error = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway routes watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._transport.close()

    async def _run(self) -> None:
        backoff = Backoff(initial=0.1, maximum=5.0)
        while True:
            try:
                await self._watch(backoff)
            except sdk.EcoError as err:
                self.error = str(err)
                if self.connected:
                    logger.warning("routes watch lost: %s; resuming", err)
                self.connected = False
            await asyncio.sleep(backoff.next_delay())

    async def _watch(self, backoff: Backoff) -> None:
        request = gateway_pb2.WatchRoutesRequest(
            since_revision=self.revision, store_id=self.store_id
        )
        pending: Specs | None = None  # a snapshot being received: replaces the set at its end
        async for response in self._transport.stream("WatchRoutes", request):
            if not self.connected:
                self.connected, self.error = True, ""
                backoff.reset()
            changed = False
            for event in response.events:
                kind = event.type
                route = event.route
                if kind == pb.WATCH_EVENT_TYPE_RESYNC:
                    pending = {}
                elif kind == pb.WATCH_EVENT_TYPE_SNAPSHOT_END:
                    if pending is not None:
                        changed |= pending != self.routes
                        self.routes, pending = pending, None
                elif kind == pb.WATCH_EVENT_TYPE_PUT:
                    if self._group and route.group != self._group:
                        continue
                    spec = {**struct_to_dict(route.spec), "name": route.name}
                    target = pending if pending is not None else self.routes
                    changed |= target.get(route.name) != spec
                    target[route.name] = spec
                elif kind == pb.WATCH_EVENT_TYPE_DELETE:
                    target = pending if pending is not None else self.routes
                    changed |= target.pop(route.name, None) is not None
                if event.revision and pending is None:
                    # (during a snapshot, not before its end: a watch resumed
                    # from its middle would never see the rest of it)
                    self.revision = max(self.revision, event.revision)
            self.store_id = response.store_id or self.store_id
            if changed and pending is None:
                try:
                    await self._on_routes(dict(self.routes))
                except Exception:
                    logger.exception("the new routes could not be applied; the old ones stay")
                    continue
                self._keep()

    def _keep(self) -> None:
        """Writes the set to ``data_dir`` (atomically: a new file renamed over the old)."""
        if self._data_dir is None:
            return
        path = self._data_dir / ROUTES_FILE
        data = {"revision": self.revision, "store_id": self.store_id, "routes": self.routes}
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data), encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            logger.warning("%s: cannot keep the routes: %s", path, exc)
