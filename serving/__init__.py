"""What every server process of the project shares, below the bus, the control
plane and the sidecar: expected errors and their gRPC statuses (`errors`),
the guard against undecodable requests (`rpc_guard`), paging (`paging`),
the limits and runner of its HTTP servers (`http_limits`, `web_server`), and
the garbage collector's settings for a long-running process (`process`).

It imports only the SDK's layer and below (generated code, grpc, aiohttp), so
the control plane and the sidecar can both stand on it without standing on
each other.
"""
