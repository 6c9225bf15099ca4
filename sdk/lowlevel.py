"""The SDK's lower-level pieces, for code that builds its own client on them
(the sidecar's message relay does): stable enough to import, but not what an
application needs — start with :class:`sdk.AsyncClient`.

- :class:`Transport`: one gRPC connection to the control plane's replicas,
  with failover, per-call deadlines and the retry policy; ``unary(method,
  request)`` and the streaming calls raise every gRPC error as the
  :class:`sdk.EcoError` tree, through the SDK's one translation point.
- :func:`client_channels`: the channel factory a client makes from a CA
  file (or ``ECO_CA_FILE``), for a :class:`Transport` of your own.
- :class:`Backoff`: the SDK's jittered exponential backoff, as an async
  iterator of waits.
- :class:`PublishBatcher`, :class:`AckBatcher`: coalesce concurrent publishes
  and acks into ``PublishBatch`` and ``Ack`` calls; :func:`publish_request`
  builds one ``PublishRequest``.
- :data:`SIDECAR_LOCAL_API`: the ``reason`` of the :class:`sdk.UnimplementedError`
  a call gets when its address is a sidecar's local API, not a control plane.
- :func:`struct_to_dict`: a ``google.protobuf.Struct`` (a stored route's
  spec) as plain JSON values, whole numbers as integers.
"""

from sdk._retry import Backoff
from sdk._struct import struct_to_dict
from sdk._transport import SIDECAR_LOCAL_API, Transport, client_channels
from sdk.bus import AckBatcher, PublishBatcher, publish_request

__all__ = [
    "SIDECAR_LOCAL_API",
    "AckBatcher",
    "Backoff",
    "PublishBatcher",
    "Transport",
    "client_channels",
    "publish_request",
    "struct_to_dict",
]
