"""The per-host sidecar agent: health checks, load balancing, proxying."""
