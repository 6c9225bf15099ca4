"""``eco acl``: the first token, policies and tokens (docs/security.md, "ACLs").

Calls the control plane's AclService through the SDK's transport (so errors
come back as the SDK's, printed by ``eco``'s one error handler). Secrets are
printed once, by ``bootstrap`` and ``token create``, and nowhere else.
"""

from __future__ import annotations

import datetime
from typing import Any

import click
from ecosystem.v1 import acl_pb2

from eco._output import emit, render_table
from eco._settings import Settings, call, data_options, pass_settings

__all__ = ["acl"]

_RESOURCES = "service, namespace, node, bus, acl, operator, route, sync, platform, dataset"


def _when(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _token_dict(token: acl_pb2.AclToken) -> dict[str, Any]:
    return {
        "accessor_id": token.accessor_id,
        "description": token.description,
        "policies": list(token.policies),
        "create_time": _when(token.create_time),
    }


def _policy_dict(policy: acl_pb2.AclPolicy) -> dict[str, Any]:
    return {
        "name": policy.name,
        "description": policy.description,
        "rules": [f"{r.resource}:{r.pattern}:{r.access}" for r in policy.rules],
    }


def _with_secret(token: acl_pb2.AclToken, secret: str) -> dict[str, Any]:
    return {"secret": secret, **_token_dict(token)}


def _secret_table(what: str, token: acl_pb2.AclToken, secret: str) -> str:
    return "\n".join(
        [
            f"{what}: {token.accessor_id} ({', '.join(token.policies)})",
            f"secret: {secret}",
            "keep the secret safe: it is shown only now (pass it as --token or ECO_TOKEN)",
        ]
    )


@click.group()
def acl() -> None:
    """Tokens and policies: who may do what on the control plane.

    \b
    Examples:
      eco acl bootstrap                           # once: the management token
      export ECO_TOKEN=<its secret>
      eco acl policy create web --rule service:web:write --rule bus:orders.*:publish
      eco acl token create --policy web --description "web servers"
      eco acl token list
    """


@acl.command("bootstrap")
@data_options
@pass_settings
def bootstrap(settings: Settings) -> None:
    """Create the first management token (every right) and print its secret.

    Works once per control plane store, without a token, and only on the
    control plane's own host, to a loopback address (--server
    127.0.0.1:PORT); a second bootstrap is refused (exit 1, "failed
    precondition"). -o json prints {"secret": …}.
    """
    response = call(settings, "Bootstrap", acl_pb2.BootstrapRequest())
    emit(
        _with_secret(response.token, response.secret),
        settings.output,
        lambda: _secret_table("management token", response.token, response.secret),
    )


@acl.group("policy")
def policy() -> None:
    """Named lists of rules, RESOURCE:PATTERN:ACCESS.

    \b
    RESOURCE: service, namespace, node, bus, acl, operator
    PATTERN:  a name, or a glob where * matches anything (web-*, orders.*, *)
    ACCESS:   read, write, deny; for bus also publish, subscribe
    The most specific matching rule decides; a deny beats rules as specific.
    """


@policy.command("create")
@click.argument("name")
@click.option(
    "--rule",
    "rules",
    multiple=True,
    required=True,
    metavar="RESOURCE:PATTERN:ACCESS",
    help=f"A rule (repeatable). Resources: {_RESOURCES}.",
)
@click.option("--description", default="", help="What the policy is for.")
@data_options
@pass_settings
def policy_create(settings: Settings, name: str, rules: tuple[str, ...], description: str) -> None:
    """Create policy NAME with its rules.

    \b
    Examples:
      eco acl policy create web --rule service:web:write
      eco acl policy create sidecar-edge-1 --rule node:edge-1:write --rule service:*:write
      eco acl policy create readers --rule service:*:read --rule bus:*:subscribe
    """
    parsed = []
    for text in rules:
        parts = text.split(":")
        if len(parts) != 3:
            raise click.BadParameter(
                f"{text!r} is not RESOURCE:PATTERN:ACCESS", param_hint="--rule"
            )
        parsed.append(acl_pb2.AclRule(resource=parts[0], pattern=parts[1], access=parts[2]))
    request = acl_pb2.CreatePolicyRequest(
        policy=acl_pb2.AclPolicy(name=name, description=description, rules=parsed)
    )
    response = call(settings, "CreatePolicy", request)
    emit(
        _policy_dict(response.policy),
        settings.output,
        lambda: f"created policy {name}: " + ", ".join(_policy_dict(response.policy)["rules"]),
    )


def _policies_table(policies: list[dict[str, Any]]) -> str:
    if not policies:
        return "no policies"
    return render_table(
        ("NAME", "RULES", "DESCRIPTION"),
        [(p["name"], p["rules"], p["description"]) for p in policies],
    )


@policy.command("list")
@data_options
@pass_settings
def policy_list(settings: Settings) -> None:
    """List every policy with its rules."""
    response = call(settings, "ListPolicies", acl_pb2.ListPoliciesRequest())
    policies = [_policy_dict(p) for p in response.policies]
    emit({"policies": policies}, settings.output, lambda: _policies_table(policies))


@policy.command("get")
@click.argument("name")
@data_options
@pass_settings
def policy_get(settings: Settings, name: str) -> None:
    """Show policy NAME."""
    response = call(settings, "GetPolicy", acl_pb2.GetPolicyRequest(name=name))
    data = _policy_dict(response.policy)
    emit(data, settings.output, lambda: _policies_table([data]))


@policy.command("delete")
@click.argument("name")
@data_options
@pass_settings
def policy_delete(settings: Settings, name: str) -> None:
    """Delete policy NAME; tokens that name it lose its rules (within a second)."""
    call(settings, "DeletePolicy", acl_pb2.DeletePolicyRequest(name=name))
    emit({"deleted": name}, settings.output, lambda: f"deleted policy {name}")


@acl.group("token")
def token() -> None:
    """Tokens: secrets that carry policies."""


@token.command("create")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    required=True,
    metavar="NAME",
    help="A policy the token carries (repeatable).",
)
@click.option("--description", default="", help="Who or what uses it (shown in the audit log).")
@data_options
@pass_settings
def token_create(settings: Settings, policies: tuple[str, ...], description: str) -> None:
    """Create a token and print its secret, once.

    \b
    Examples:
      eco acl token create --policy web --description "web servers"
      eco acl token create --policy sidecar-edge-1 -o json | jq -r .secret > token
    """
    request = acl_pb2.CreateTokenRequest(policies=list(policies), description=description)
    response = call(settings, "CreateToken", request)
    emit(
        _with_secret(response.token, response.secret),
        settings.output,
        lambda: _secret_table("token", response.token, response.secret),
    )


@token.command("list")
@data_options
@pass_settings
def token_list(settings: Settings) -> None:
    """List every token: accessor id, policies, description (never secrets)."""
    response = call(settings, "ListTokens", acl_pb2.ListTokensRequest())
    tokens = [_token_dict(t) for t in response.tokens]

    def table() -> str:
        if not tokens:
            return "no tokens"
        return render_table(
            ("ACCESSOR ID", "POLICIES", "DESCRIPTION", "CREATED"),
            [(t["accessor_id"], t["policies"], t["description"], t["create_time"]) for t in tokens],
        )

    emit({"tokens": tokens}, settings.output, table)


@token.command("delete")
@click.argument("accessor_id")
@data_options
@pass_settings
def token_delete(settings: Settings, accessor_id: str) -> None:
    """Delete the token ACCESSOR_ID; its secret is refused from then on."""
    call(settings, "DeleteToken", acl_pb2.DeleteTokenRequest(accessor_id=accessor_id))
    emit({"deleted": accessor_id}, settings.output, lambda: f"deleted token {accessor_id}")
