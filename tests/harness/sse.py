"""Reading Server-Sent Events from an aiohttp response, as a browser's EventSource would."""

from __future__ import annotations

import asyncio

import aiohttp

__all__ = ["read_event"]


async def read_event(resp: aiohttp.ClientResponse, wait: float = 10.0) -> dict[str, str]:
    """The next event's fields (comment-only blocks are skipped); EOFError when
    the stream ends, TimeoutError after ``wait`` seconds without one."""
    async with asyncio.timeout(wait):
        fields: dict[str, str] = {}
        while True:
            line = (await resp.content.readline()).decode()
            if not line:
                raise EOFError("the event stream ended")
            line = line.rstrip("\n")
            if not line:
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
