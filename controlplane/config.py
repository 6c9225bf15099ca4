"""Configuration of one control-plane process: validated, frozen, loaded at the edge."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controlplane.store.sqlite import missing_directory
from serving.addresses import is_loopback

__all__ = ["TLS_CA_AUTO", "ControlPlaneConfig", "is_loopback", "parse_hostport"]

DEFAULT_STORE = "sqlite://.eco/controlplane.db"
#: ``sidecar_bus_url`` that keeps sidecars relaying through the control plane.
SIDECARS_VIA_CONTROLPLANE = "controlplane"


#: ``--tls-ca auto``: the control plane keeps its CA in the store.
TLS_CA_AUTO = "auto"


def _is_nats(url: str) -> bool:
    return url.strip().partition("://")[0] in ("nats", "tls") and "://" in url


def parse_hostport(value: str) -> tuple[str, int]:
    """Splits ``host:port`` (IPv6 as ``[::1]:port``); port 0 means "any free"."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port must be a number between 0 and 65535")
    return host, int(port)


class ControlPlaneConfig(BaseModel):
    """Everything one ``eco controlplane`` process needs to know."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # gRPC listen address; port 0 picks a free one (see ControlPlane.address).
    listen: str = "127.0.0.1:7400"
    # Admin HTTP (/healthz, /metrics); None disables it.
    admin_listen: str | None = "127.0.0.1:7401"
    # memory://, sqlite://PATH or etcd://HOSTS/PREFIX.
    store_url: str = DEFAULT_STORE
    # The message bus: embedded:// (in this process; durable streams in a
    # `bus/` directory next to a SQLite store, in memory with memory://) or
    # nats://HOST:PORT[,HOST:PORT...] (JetStream for durable streams).
    bus_url: str = "embedded://"
    # The broker sidecars relay their applications' messages to, told to each
    # in its session: "" means the --bus URL when that is NATS (sidecars dial
    # NATS themselves) and this control plane with the embedded broker;
    # another NATS URL of the same servers as sidecars reach them (other
    # hosts, other credentials); "controlplane" keeps them relaying through
    # this control plane.
    sidecar_bus_url: str = ""
    # Seconds in-flight calls get to finish on shutdown before they are cancelled.
    grace: float = Field(default=5.0, ge=0, le=300)
    # Seconds, after turning NOT_SERVING, during which new calls are answered
    # UNAVAILABLE (so clients and balancers move away) before the listener closes.
    drain_delay: float = Field(default=0.5, ge=0, le=60)
    # Events kept in memory so watchers can resume without a snapshot.
    watch_history: int = Field(default=20_000, ge=100)
    # Pending events per watcher before it is sent a RESYNC instead.
    watch_queue: int = Field(default=4_096, ge=16)
    # Registry watch streams served at once; more get RESOURCE_EXHAUSTED.
    max_watch_streams: int = Field(default=10_000, ge=1, le=1_000_000)

    # Name of this replica, unique among the replicas over one store: shown to
    # sidecars and in `eco node list`, held in the leader key while it leads
    # (default: host name and the port it listens on).
    replica: str = ""
    # HOST:PORT the other replicas reach this one at (they ask it about its
    # sidecars); default: the gRPC address, with a wildcard host replaced by
    # this machine's host name.
    advertise: str = ""
    # Several replicas over one store: the elected replica's lease, so a crashed
    # leader is replaced within this many seconds (a stopped one at once).
    leader_ttl: float = Field(default=10.0, gt=0, le=300)
    # Seconds without word from the store (its watch reports progress every
    # second) before health turns NOT_SERVING; it turns back when the store answers.
    store_timeout: float = Field(default=5.0, ge=1, le=300)
    # Load spreading: every interval, a replica holding more than 1.5 x its
    # share of sidecar streams + 1 ends up to `rebalance_batch` of them
    # (they reconnect elsewhere and resume); 0 never sheds.
    rebalance_interval: float = Field(default=5.0, gt=0, le=3600)
    rebalance_batch: int = Field(default=10, ge=0, le=10_000)
    # Sidecar sessions: grace after a dropped stream before their instances
    # turn CRITICAL, then how long they stay CRITICAL before removal, and the
    # anti-entropy interval sidecars are asked to keep. Sidecars may ask for
    # their own grace and removal delay in their hello.
    session_grace: int = Field(default=15, ge=1, le=3600)
    deregister_critical_after: int = Field(default=60, ge=1, le=7 * 24 * 3600)
    sync_interval: int = Field(default=30, ge=1, le=3600)
    # Sidecar (agent) streams this replica holds at once, and from one peer
    # address; more get RESOURCE_EXHAUSTED.
    max_agent_streams: int = Field(default=10_000, ge=1, le=1_000_000)
    max_agent_streams_per_peer: int = Field(default=1_000, ge=1, le=1_000_000)
    # Seconds a sidecar stream may stay silent before it is ended (sidecars
    # ping every few seconds while idle).
    agent_idle_timeout: float = Field(default=20.0, ge=5, le=3600)
    # Seconds a node record is kept after its session was lost and its
    # instances are gone (then `eco node list` forgets it).
    node_retention: float = Field(default=3600.0, ge=0, le=30 * 24 * 3600)
    # Scheduled sync jobs (docs/sync-jobs.md): a pending run no sidecar on its
    # node claimed within sync_claim_timeout seconds fails, and so does a
    # running one whose sidecar sent no heartbeat (every few seconds) for
    # sync_run_timeout seconds.
    sync_claim_timeout: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    sync_run_timeout: float = Field(default=60.0, ge=5, le=24 * 3600)

    # TLS on the gRPC and admin listeners, one of two ways: a certificate and
    # key the operator provides (PEM files), or a CA (certificate and key) from
    # which the control plane issues its own server certificate at start, for
    # its listen host, "localhost" and `tls_names` (DNS names or IPs). With a
    # certificate, `tls_ca` alone is the CA that signed the replicas'
    # certificates, trusted when replicas call each other.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_ca_key: str = ""
    tls_names: tuple[str, ...] = ()
    # Lifetime of the server certificate issued from the CA, seconds; it is
    # issued again at two thirds of it (and when a new root starts signing).
    tls_cert_ttl: float = Field(default=365 * 24 * 3600.0, ge=1, le=3650 * 24 * 3600)
    # `tls_ca = "auto"`: the CA is kept in the store (created by the first
    # replica to start; every replica shares it), with this trust domain.
    trust_domain: str = "ecosystem.local"
    # Lifetime of the workload certificates signed for sidecars, seconds.
    workload_cert_ttl: float = Field(default=24 * 3600.0, ge=1, le=90 * 24 * 3600)
    # Plaintext on an address other hosts can reach, knowingly.
    insecure: bool = False
    # Access control: "deny" refuses every call without a token that grants
    # it; "allow" lets calls without a token do anything (calls with one are
    # still checked, "allowed" where none of its rules match). None: "allow"
    # when every listener is on loopback, else "deny" (see docs/security.md).
    acl: Literal["allow", "deny"] | None = None
    # Where the audit log (JSON lines: every write, every refusal) goes; "" for nowhere.
    audit_log: str = ""

    @field_validator("listen", "admin_listen")
    @classmethod
    def _hostport(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hostport(value)
        return value

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str) -> str:
        if value and parse_hostport(value)[1] == 0:
            raise ValueError(f"{value!r}: give the port other replicas can reach")
        return value

    @field_validator("bus_url")
    @classmethod
    def _bus(cls, value: str) -> str:
        if value.strip() != "embedded" and "://" not in value:
            raise ValueError(
                f"{value!r} is not a bus URL: use embedded:// or nats://HOST:PORT[,HOST:PORT...]"
            )
        return value.strip()

    @field_validator("sidecar_bus_url")
    @classmethod
    def _sidecar_bus(cls, value: str) -> str:
        value = value.strip()
        if value and value != SIDECARS_VIA_CONTROLPLANE and not _is_nats(value):
            raise ValueError(
                f"{value!r}: give a NATS URL (nats://HOST:PORT[,HOST:PORT...]) or "
                f"{SIDECARS_VIA_CONTROLPLANE!r}"
            )
        return value

    @model_validator(mode="after")
    def _sidecars_on_the_same_bus(self) -> ControlPlaneConfig:
        if _is_nats(self.sidecar_bus_url) and not _is_nats(self.bus_url):
            raise ValueError(
                "sidecar_bus_url: sidecars can reach NATS only when the bus is NATS (--bus nats://…)"
            )
        return self

    @model_validator(mode="after")
    def _tls(self) -> ControlPlaneConfig:
        if self.tls_ca == TLS_CA_AUTO and (self.tls_ca_key or self.tls_cert):
            raise ValueError(
                "--tls-ca auto keeps the CA in the store: give no --tls-ca-key or --tls-cert"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_ca_key and not self.tls_ca:
            raise ValueError("--tls-ca-key needs --tls-ca (the CA's certificate)")
        if self.tls_ca_key and self.tls_cert:
            raise ValueError(
                "give either --tls-cert/--tls-key (a certificate of your own) or "
                "--tls-ca/--tls-ca-key (the control plane issues its own), not both"
            )
        if self.tls_ca and not self.tls_ca_key and not self.tls_cert and not self.ca_auto:
            raise ValueError("--tls-ca needs --tls-ca-key, or --tls-cert/--tls-key")
        if "tls_cert_ttl" in self.model_fields_set and not (self.tls_ca_key or self.ca_auto):
            raise ValueError(
                "--tls-cert-ttl needs --tls-ca/--tls-ca-key or --tls-ca auto (it is the lifetime "
                "of the certificate the control plane issues itself)"
            )
        if self.tls_names and not (self.tls_ca_key or self.ca_auto):
            raise ValueError(
                "--tls-name needs --tls-ca/--tls-ca-key or --tls-ca auto (it names the issued "
                "certificate)"
            )
        if self.tls or self.insecure:
            return self
        exposed = [
            address
            for address in (self.listen, self.admin_listen)
            if address is not None and not is_loopback(parse_hostport(address)[0])
        ]
        if exposed:
            raise ValueError(
                f"{exposed[0]} is reachable from other hosts and would serve plaintext: give "
                "--tls-cert/--tls-key or --tls-ca/--tls-ca-key, or --insecure to accept the risk"
            )
        return self

    @property
    def acl_mode(self) -> Literal["allow", "deny"]:
        """The ACL mode in force: ``acl``, or by default "allow" only when every
        listener is on loopback."""
        if self.acl is not None:
            return self.acl
        listeners = [a for a in (self.listen, self.admin_listen) if a is not None]
        return "allow" if all(is_loopback(parse_hostport(a)[0]) for a in listeners) else "deny"

    @property
    def tls(self) -> bool:
        """Whether the listeners serve TLS."""
        return bool(self.tls_cert or self.tls_ca_key or self.ca_auto)

    @property
    def ca_auto(self) -> bool:
        """Whether the CA is kept in the store (``--tls-ca auto``)."""
        return self.tls_ca == TLS_CA_AUTO

    @property
    def announced_bus_url(self) -> str:
        """The broker URL sidecars are told to relay to ("": through this control plane)."""
        if self.sidecar_bus_url == SIDECARS_VIA_CONTROLPLANE:
            return ""
        if self.sidecar_bus_url:
            return self.sidecar_bus_url
        return self.bus_url if _is_nats(self.bus_url) else ""

    @field_validator("store_url")
    @classmethod
    def _store(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(
                f"{value!r} is not a store URL: use memory://, sqlite://PATH "
                "or etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
            )
        scheme, _, path = value.partition("://")
        if scheme == "sqlite" and path:
            missing = missing_directory(Path(path))
            if missing is not None:
                raise ValueError(
                    f"{missing} does not exist: only the store file's own directory "
                    f"({Path(path).parent.name}/) is created; create the directories "
                    "first, or check the path"
                )
        return value
