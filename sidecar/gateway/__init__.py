"""The API gateway (``eco gateway``): traffic from outside the mesh enters here,
is authenticated, limited and shaped, and is routed to services found in the
registry. See docs/gateway.md."""
