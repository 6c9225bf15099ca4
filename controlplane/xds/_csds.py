"""Client Status Discovery Service: what each xDS client was sent and did with it.

The standard xDS debugging API, served on the control plane's gRPC port from
the :class:`NodeBook`: per node, each resource it holds by the last
response, with its version and status (ACKED, NACKED with the client's
error, or REQUESTED while no answer came). Tools that speak CSDS dump it;
so does ``eco xds status``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import timestamp_pb2

from controlplane.xds._resources import TYPES
from controlplane.xds._session import StreamError
from controlplane.xds._status import NodeBook, NodeStatus

__all__ = ["CSDS_SERVICE", "CsdsServicer", "add_csds", "client_config"]

CSDS_SERVICE = csds_pb2.DESCRIPTOR.services_by_name["ClientStatusDiscoveryService"].full_name
_BY_SHORT = {t.rsplit(".", 1)[-1]: t for t in TYPES}


def _matcher(index: int, matcher: Any) -> Any:
    """A predicate on node ids from one ``node_matchers[index].node_id``
    (exact, prefix, suffix, contains or safe_regex; empty: any)."""
    field = f"node_matchers[{index}].node_id"
    if not matcher.HasField("node_id"):
        return lambda _node_id: True
    string = matcher.node_id
    kind = string.WhichOneof("match_pattern")
    if kind is None:
        return lambda _node_id: True
    if string.ignore_case and kind != "safe_regex":

        def fold(value: str) -> str:
            return value.lower()
    else:

        def fold(value: str) -> str:
            return value

    if kind == "exact":
        wanted = fold(string.exact)
        return lambda node_id: fold(node_id) == wanted
    if kind == "prefix":
        wanted = fold(string.prefix)
        return lambda node_id: fold(node_id).startswith(wanted)
    if kind == "suffix":
        wanted = fold(string.suffix)
        return lambda node_id: fold(node_id).endswith(wanted)
    if kind == "contains":
        wanted = fold(string.contains)
        return lambda node_id: wanted in fold(node_id)
    if kind == "safe_regex":
        try:
            pattern = re.compile(string.safe_regex.regex)
        except re.error as exc:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{field}.safe_regex.regex: {exc}"
            ) from None
        return lambda node_id: pattern.fullmatch(node_id) is not None
    raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {kind} is not supported")


def client_config(status: NodeStatus, *, contents: bool = True) -> csds_pb2.ClientConfig:
    """One node's resources as CSDS reports them."""
    config = csds_pb2.ClientConfig()
    config.node.id = status.node_id
    config.node.user_agent_name = status.user_agent
    config.node.cluster = status.cluster
    for short, of_type in sorted(status.types.items()):
        type_url = _BY_SHORT.get(short, short)
        state = of_type.state
        nack = of_type.nack
        for name in sorted(of_type.resources):
            entry = config.generic_xds_configs.add(
                type_url=type_url, name=name, version_info=of_type.sent_version
            )
            if contents:
                entry.xds_config.CopyFrom(of_type.resources[name])
            if state == "ACKED":
                entry.client_status = dump_pb2.ACKED
                entry.config_status = csds_pb2.SYNCED
            elif state == "NACKED" and nack is not None and name in nack.resources:
                entry.client_status = dump_pb2.NACKED
                entry.config_status = csds_pb2.ERROR
                entry.error_state.details = nack.error
                entry.error_state.version_info = nack.version
                entry.error_state.last_update_attempt.CopyFrom(
                    timestamp_pb2.Timestamp(seconds=int(nack.at))
                )
            else:
                entry.client_status = dump_pb2.REQUESTED
                entry.config_status = csds_pb2.STALE
    return config


class CsdsServicer:
    """Answers CSDS from the xDS node book."""

    def __init__(self, book: NodeBook) -> None:
        self.book = book

    def _answer(self, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
        matchers = [_matcher(i, m) for i, m in enumerate(request.node_matchers)]
        contents = not request.exclude_resource_contents
        return csds_pb2.ClientStatusResponse(
            config=[
                client_config(status, contents=contents)
                for status in self.book.nodes()
                if all(match(status.node_id) for match in matchers)
            ]
        )

    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: Any
    ) -> csds_pb2.ClientStatusResponse:
        try:
            return self._answer(request)
        except StreamError as exc:
            await context.abort(exc.code, exc.details)
            raise  # abort raised already; keeps the type checker content

    async def StreamClientStatus(
        self, request_iterator: AsyncIterator[csds_pb2.ClientStatusRequest], context: Any
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for request in request_iterator:
            try:
                yield self._answer(request)
            except StreamError as exc:
                await context.abort(exc.code, exc.details)


def add_csds(server: grpc.aio.Server, book: NodeBook) -> CsdsServicer:
    """Serves CSDS from ``book`` on ``server``."""
    servicer = CsdsServicer(book)
    csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(servicer, server)
    return servicer
