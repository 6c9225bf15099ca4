"""The web console: the control plane's state in a browser, live, at ``/ui/``.

Served by the admin listener (``controlplane.admin``), so by every control
plane and by ``eco dev``: there is no separate server and nothing to build.
Pages are HTML rendered here (``_html``, ``_pages``) from the control plane's
own objects (``_data``); one small script (``static/console.js``, no
framework) follows ``/ui/events``, a server-sent event stream fed by one
watch on the registry view (``_live``), and on each change fetches the page's
content again. Why this approach, and each page: docs/console.md.

With ``--acl deny`` every page needs a token: ``/ui/login`` takes a secret,
keeps it in an HttpOnly cookie (sent with page loads, refreshes and the event
stream alike; an ``Authorization: Bearer`` header works too), and each page
shows only what that token may read, by the checks the ACL interceptor
makes on the matching RPCs.
"""

from __future__ import annotations

from controlplane.ui._routes import Console, add_console

__all__ = ["Console", "add_console"]
