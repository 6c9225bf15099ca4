"""The etcd store (``etcd://HOST:PORT[,HOST:PORT…][/PREFIX]``): the store's
contract on an etcd cluster over its v3 gRPC API (see `_store`; the client in
`_client`, key and value encoding in `_codec`, the URL in `_config`, watches
in `_watch`)."""

from controlplane.store.etcd._config import EtcdConfig, parse_etcd_url
from controlplane.store.etcd._store import EtcdStore

__all__ = ["EtcdConfig", "EtcdStore", "parse_etcd_url"]
