"""Endpoint updates in parts, so that no message outgrows what a sidecar reads.

An update carries the complete instances of every changed service, and one
service may hold more than any gRPC message should (a stock client reads at
most 4 MiB). `update_parts` cuts one update into messages of at most
``limit`` bytes (or one instance, if an instance alone is larger): each part
has the update's version, nonce and ``full``, and every part but the last
has ``more`` set. A service whose instances do not fit in one part continues
in the next under the same ``ServiceRef``. The sidecar puts the parts
together and applies (and acknowledges) the update only once it is whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ecosystem.v1 import agent_pb2
from ecosystem.v1 import registry_pb2 as pb

__all__ = ["update_parts"]

# Bytes of a length-delimited field's tag and length (at most) around its body.
_FRAME = 6


def update_parts(
    version: int,
    nonce: str,
    full: bool,
    services: Sequence[tuple[tuple[str, str], Sequence[pb.Instance]]],
    limit: int,
) -> Iterator[agent_pb2.EndpointUpdate]:
    """The parts of one update of ``services`` (``((namespace, name), instances)``
    each, instances in order), each at most ``limit`` bytes, built lazily."""

    def start() -> agent_pb2.EndpointUpdate:
        return agent_pb2.EndpointUpdate(version=version, nonce=nonce, full=full)

    part = start()
    size = part.ByteSize() + 4  # room for `more`
    for (namespace, name), instances in services:
        ref = agent_pb2.ServiceRef(namespace=namespace, name=name)
        entry_size = ref.ByteSize() + 2 * _FRAME
        if size + entry_size > limit and len(part.services):
            part.more = True
            yield part
            part = start()
            size = part.ByteSize() + 4
        entry = part.services.add(service=ref)
        size += entry_size
        for inst in instances:
            inst_size = inst.ByteSize() + _FRAME
            if size + inst_size > limit and (len(entry.instances) or len(part.services) > 1):
                if not len(entry.instances):
                    del part.services[-1]  # the service starts in the next part instead
                part.more = True
                yield part
                part = start()
                size = part.ByteSize() + 4 + entry_size
                entry = part.services.add(service=ref)
            entry.instances.append(inst)
            size += inst_size
    yield part
