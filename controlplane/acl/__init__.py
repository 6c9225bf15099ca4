"""Access control lists: policies, tokens, the check on every RPC, the audit log.

See docs/security.md ("ACLs") for the model; ``_rules`` for how a decision is
made, ``_table`` for what every RPC needs, ``_interceptor`` for where it is
checked, ``_store`` for where policies and tokens live.
"""

from controlplane.acl._audit import AuditLog
from controlplane.acl._interceptor import AclInterceptor, Authorizer, PermissionDeniedError
from controlplane.acl._rules import ACCESSES, RESOURCES, Rule, decide, parse_rule
from controlplane.acl._servicer import AclServicer
from controlplane.acl._store import ACL_PREFIX, MANAGEMENT_POLICY, AclStore, Identity, Policy
from controlplane.acl._table import PUBLIC, TABLE, Need, message_needs

__all__ = [
    "ACCESSES",
    "ACL_PREFIX",
    "MANAGEMENT_POLICY",
    "PUBLIC",
    "RESOURCES",
    "TABLE",
    "AclInterceptor",
    "AclServicer",
    "AclStore",
    "AuditLog",
    "Authorizer",
    "Identity",
    "Need",
    "PermissionDeniedError",
    "Policy",
    "Rule",
    "decide",
    "message_needs",
    "parse_rule",
]
