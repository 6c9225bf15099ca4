"""The AclService: a thin adapter from the API to :class:`AclStore`."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from ecosystem.v1 import acl_pb2, acl_pb2_grpc

from controlplane.acl._interceptor import Authorizer
from controlplane.acl._store import Policy, TokenRecord
from serving.acl import Rule, bearer_secret
from serving.errors import end_call, to_status

__all__ = ["AclServicer"]

log = logging.getLogger(__name__)


def _token(record: TokenRecord) -> acl_pb2.AclToken:
    return acl_pb2.AclToken(
        accessor_id=record.accessor_id,
        description=record.description,
        policies=list(record.policies),
        create_time=record.create_time,
    )


def _policy(policy: Policy) -> acl_pb2.AclPolicy:
    return acl_pb2.AclPolicy(
        name=policy.name,
        description=policy.description,
        rules=[
            acl_pb2.AclRule(resource=r.resource, pattern=r.pattern, access=r.access)
            for r in policy.rules
        ],
    )


class AclServicer(acl_pb2_grpc.AclServiceServicer):
    """Serves policies and tokens; who may call what is the interceptor's business."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        self.store = authorizer.store

    async def _run(self, name: str, context: Any, work: Any) -> Any:
        try:
            return await work
        except Exception as exc:
            status = to_status(exc)
            if status.code == grpc.StatusCode.INTERNAL.value[0]:
                log.exception("AclService/%s failed", name)
            end_call(context, status)
            return None

    async def Bootstrap(self, request: acl_pb2.BootstrapRequest, context: Any) -> Any:
        async def work() -> acl_pb2.BootstrapResponse:
            record, secret = await self.store.bootstrap()
            log.info("ACL bootstrap: management token %s created", record.accessor_id)
            return acl_pb2.BootstrapResponse(token=_token(record), secret=secret)

        return await self._run("Bootstrap", context, work())

    async def CreatePolicy(self, request: acl_pb2.CreatePolicyRequest, context: Any) -> Any:
        async def work() -> acl_pb2.CreatePolicyResponse:
            p = request.policy
            rules = tuple(Rule(r.resource, r.pattern, r.access) for r in p.rules)
            policy = await self.store.create_policy(Policy(p.name, p.description, rules))
            return acl_pb2.CreatePolicyResponse(policy=_policy(policy))

        return await self._run("CreatePolicy", context, work())

    async def ListPolicies(self, request: acl_pb2.ListPoliciesRequest, context: Any) -> Any:
        async def work() -> acl_pb2.ListPoliciesResponse:
            policies = await self.store.list_policies()
            return acl_pb2.ListPoliciesResponse(policies=[_policy(p) for p in policies])

        return await self._run("ListPolicies", context, work())

    async def GetPolicy(self, request: acl_pb2.GetPolicyRequest, context: Any) -> Any:
        async def work() -> acl_pb2.GetPolicyResponse:
            return acl_pb2.GetPolicyResponse(
                policy=_policy(await self.store.get_policy(request.name))
            )

        return await self._run("GetPolicy", context, work())

    async def DeletePolicy(self, request: acl_pb2.DeletePolicyRequest, context: Any) -> Any:
        async def work() -> acl_pb2.DeletePolicyResponse:
            await self.store.delete_policy(request.name)
            return acl_pb2.DeletePolicyResponse()

        return await self._run("DeletePolicy", context, work())

    async def CreateToken(self, request: acl_pb2.CreateTokenRequest, context: Any) -> Any:
        async def work() -> acl_pb2.CreateTokenResponse:
            record, secret = await self.store.create_token(
                list(request.policies), request.description
            )
            log.info(
                "ACL token %s created (policies %s)", record.accessor_id, ",".join(record.policies)
            )
            return acl_pb2.CreateTokenResponse(token=_token(record), secret=secret)

        return await self._run("CreateToken", context, work())

    async def ListTokens(self, request: acl_pb2.ListTokensRequest, context: Any) -> Any:
        async def work() -> acl_pb2.ListTokensResponse:
            return acl_pb2.ListTokensResponse(
                tokens=[_token(t) for t in await self.store.list_tokens()]
            )

        return await self._run("ListTokens", context, work())

    async def DeleteToken(self, request: acl_pb2.DeleteTokenRequest, context: Any) -> Any:
        async def work() -> acl_pb2.DeleteTokenResponse:
            await self.store.delete_token(request.accessor_id)
            log.info("ACL token %s deleted", request.accessor_id)
            return acl_pb2.DeleteTokenResponse()

        return await self._run("DeleteToken", context, work())

    async def ResolveToken(self, request: acl_pb2.ResolveTokenRequest, context: Any) -> Any:
        async def work() -> acl_pb2.ResolveTokenResponse:
            # The interceptor has refused a missing (--acl deny) or unknown token already.
            identity = await self.authorizer.identify(bearer_secret(context.invocation_metadata()))
            return acl_pb2.ResolveTokenResponse(
                token=acl_pb2.AclToken(
                    accessor_id=identity.accessor_id, description=identity.description
                ),
                rules=[
                    acl_pb2.AclRule(resource=r.resource, pattern=r.pattern, access=r.access)
                    for r in identity.rules
                ],
                default_allow=self.authorizer.default_allow,
            )

        return await self._run("ResolveToken", context, work())
