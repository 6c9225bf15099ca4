"""Access control lists: policies, tokens, the check on every RPC, the audit log.

See docs/security.md ("ACLs") for the model; ``serving.acl`` for how a
decision is made (shared with the sidecar), ``_table`` for what every RPC
needs, ``_interceptor`` for where it is checked, ``_store`` for where
policies and tokens live.
"""

from controlplane.acl._audit import AuditLog
from controlplane.acl._interceptor import AclInterceptor, Authorizer
from controlplane.acl._servicer import AclServicer
from controlplane.acl._store import ACL_PREFIX, MANAGEMENT_POLICY, AclStore, Identity, Policy
from controlplane.acl._table import PUBLIC, TABLE, message_needs
from serving.acl import ACCESSES, RESOURCES, Need, PermissionDeniedError, Rule, decide, parse_rule

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
