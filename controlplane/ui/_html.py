"""HTML for the console's pages: plain string building, every value escaped.

``page`` wraps a page's content in the layout (navigation, the live banner,
the script); ``fragment`` requests (the live refresh) get the content alone.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable, Sequence
from urllib.parse import quote, urlencode

__all__ = ["NAV", "esc", "page", "table", "when"]

#: The pages, in the navigation's order: (path under /ui/, title).
NAV = (
    ("services", "Services"),
    ("nodes", "Nodes"),
    ("platforms", "Platforms"),
    ("bus", "Bus"),
    ("routes", "Gateway routes"),
    ("sync", "Sync jobs"),
    ("intentions", "Intentions"),
    ("datasets", "Datasets"),
)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def path(*parts: str, query: dict[str, str] | None = None) -> str:
    """``/ui/`` and the parts, each percent-encoded, and the non-empty query values."""
    url = "/ui/" + "/".join(quote(p, safe="") for p in parts)
    kept = {k: v for k, v in (query or {}).items() if v}
    return url + ("?" + urlencode(kept) if kept else "")


def when(ms: int) -> str:
    """A Unix time in milliseconds as UTC, or "—" for none."""
    if ms <= 0:
        return "—"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def table(
    headers: Sequence[str],
    rows: Iterable[tuple[str, Sequence[str]]],
    *,
    empty: str,
    test_id: str,
) -> str:
    """A table of ``rows`` (row attributes, already-escaped cells), or ``empty``."""
    body = "".join(
        f"<tr {attrs}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
        for attrs, cells in rows
    )
    if not body:
        return f'<p class="empty" data-testid="{test_id}-empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (
        f'<table data-testid="{test_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def page(
    *,
    title: str,
    current: str,
    content: str,
    revision: int,
    who: str,
    logout: bool,
) -> str:
    nav = "".join(
        f'<a href="{path(slug)}"{" aria-current=page" if slug == current else ""}>{esc(name)}</a>'
        for slug, name in NAV
    )
    session = ""
    if logout:
        session = (
            f'<form method="post" action="/ui/logout" class="session">'
            f'<span data-testid="who">{esc(who)}</span> <button type="submit">Log out</button>'
            "</form>"
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · Ecosystem console</title>
<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/ui/static/console.css">
<script src="/ui/static/console.js" defer></script>
</head>
<body data-revision="{revision}">
<header>
<span class="brand">Ecosystem</span>
<nav>{nav}</nav>
{session}
</header>
<div id="banner" class="banner" role="alert" hidden data-testid="stale-banner">
Lost the control plane: this page shows the state as of revision
<span id="banner-revision">{revision}</span> and may be stale. Reconnecting…
</div>
<main id="content" data-testid="content">
{content}
</main>
<footer>Live: <span id="live-state" data-testid="live-state">connecting</span>
· revision <span id="live-revision" data-testid="live-revision">{revision}</span></footer>
</body>
</html>
"""


def login(message: str, *, default_allow: bool) -> str:
    note = (
        f'<p class="error" role="alert" data-testid="login-error">{esc(message)}</p>'
        if message
        else ""
    )
    if default_allow:
        intro = (
            "ACLs are off here (<code>--acl allow</code>): no token is needed. A token's "
            "secret is applied as the API applies it (its deny rules hide what they name)."
        )
    else:
        intro = (
            "This control plane runs with ACLs (<code>--acl deny</code>): log in with an "
            "ACL token's secret. You will see what its policies let it read."
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · Ecosystem console</title>
<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/ui/static/console.css">
</head>
<body>
<main class="login">
<h1>Ecosystem console</h1>
<p>{intro}</p>
{note}
<form method="post" action="/ui/login">
<label for="token">Token secret</label>
<input id="token" name="token" type="password" autocomplete="off" required
 data-testid="token-input">
<button type="submit" data-testid="login-submit">Log in</button>
</form>
</main>
</body>
</html>
"""
