"""The message bus for applications that speak no gRPC, served by the sidecar
over its relay: `sidecar.bridges.web` (plain HTTP, Server-Sent Events and
WebSocket; aiohttp is imported there and only there) and
`sidecar.bridges.amqp` (AMQP 0-9-1 links to a RabbitMQ broker). Each is
imported only when configured."""
