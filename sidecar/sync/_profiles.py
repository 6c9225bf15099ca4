"""Named profiles: connector settings kept on the host that moves the data.

A job (or ``eco sync run``) names a profile per side (``source_profile``,
``destination_profile``); the host that runs it looks the name up in its own
profiles, so credentials never travel through the control plane: only the
names do. A profiles file is YAML::

    profiles:
      minio:
        endpoint_url: http://minio.internal:9000
        access_key_id: eco
        secret_access_key: s3cr3t
      nas:
        key_file: /etc/eco/nas_ed25519
        port: 2222

Where the host finds them: ``eco sync run --profiles FILE``, else
``$ECO_SYNC_PROFILES``, else ``$XDG_CONFIG_HOME/eco/sync-profiles.yaml``
(``~/.config/eco/sync-profiles.yaml``); a sidecar reads ``sync.profiles_file``
or inline ``sync.profiles`` of its config first (``SyncHostConfig``, with the
file's model in :mod:`sidecar.sync._profile_models`, which imports pydantic:
this module does not, so a run naming no profile starts without it).
A file is read each time a run names a profile, so an edit (a rotated key)
takes effect at the next run without a restart.

The file is checked like the other configuration files (line and field in
every message): profile names, every key against the settings some
connector reads (:data:`KNOWN_SETTINGS`, as docs/sync-connectors.md lists
them), and scalar values. When a run uses a profile, its keys are checked
again against the settings of the store it is used for (an ``endpoint_url``
on an ``az://`` side is refused, not ignored).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from sidecar._config_file import Problems

__all__ = [
    "KNOWN_SETTINGS",
    "PROFILES_ENV",
    "ProfileError",
    "Profiles",
    "default_profiles_path",
    "load_profiles",
    "profile_settings",
]

#: The environment variable naming a profiles file.
PROFILES_ENV = "ECO_SYNC_PROFILES"

_COMMON = ("part_size", "list_page_size")
_PARTS = ("part_concurrency", "upload_cutoff")
#: The settings each connector reads, by URL scheme (docs/sync-connectors.md).
KNOWN_SETTINGS: Mapping[str, tuple[str, ...]] = {
    "file": _COMMON,
    "sftp": (
        *_COMMON,
        "key_file",
        "passphrase",
        "known_hosts",
        "password",
        "user",
        "port",
        "connections",
        "channels",
        "timeout",
    ),
    "s3": (
        *_COMMON,
        *_PARTS,
        "endpoint_url",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "region",
        "addressing_style",
        "etag_is_md5",
        "payload_signing",
    ),
    "gs": (*_COMMON, "emulator_host", "credentials_file", "project"),
    "az": (
        *_COMMON,
        *_PARTS,
        "connection_string",
        "account_url",
        "account_key",
        "account_name",
        "sas_token",
    ),
}
_ANY_STORE = tuple(sorted({key for keys in KNOWN_SETTINGS.values() for key in keys}))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAME_RULE = "letters, digits, '-', '_' and '.', starting with a letter or digit, at most 64"


class ProfileError(ValueError):
    """A run names a profile its host cannot give: not defined, or with a key
    the side's store does not read. The message names the profile and where
    the host looked."""


def _checked_profiles(
    value: Mapping[str, Any], loc: tuple[str, ...], problem: Problems
) -> dict[str, dict[str, str]]:
    """``value`` as profiles (name → settings, every value a string); each
    problem recorded at its location under ``loc``."""
    out: dict[str, dict[str, str]] = {}
    for name, settings in value.items():
        where = (*loc, str(name))
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            problem(where, f"{name!r} is not a valid profile name: {_NAME_RULE}")
            continue
        if not isinstance(settings, Mapping):
            problem(where, "a profile is a mapping of settings (key: value)")
            continue
        if not settings:
            problem(where, "a profile needs at least one setting")
        kept: dict[str, str] = {}
        for key, raw in settings.items():
            if key not in _ANY_STORE:
                problem((*where, str(key)), _unknown_setting(str(key)))
            elif isinstance(raw, bool):
                kept[key] = "true" if raw else "false"
            elif isinstance(raw, str | int | float):
                kept[key] = str(raw)
            else:
                problem((*where, key), "a setting's value is a string or a number")
        out[name] = kept
    return out


def _unknown_setting(key: str) -> str:
    message = f"{key!r} is not a setting of any store (docs/sync-connectors.md lists them)"
    close = difflib.get_close_matches(key, _ANY_STORE, n=1, cutoff=0.6)
    return message + (f"; did you mean {close[0]!r}?" if close else "")


@dataclass(frozen=True, slots=True)
class Profiles:
    """The profiles of a host, and where they came from (for messages);
    ``found`` is False when no file was at the default place."""

    origin: str
    entries: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    found: bool = True

    def settings(self, name: str, url: str, role: str) -> dict[str, str]:
        """Profile ``name``'s settings for ``role``'s store at ``url``;
        ProfileError when it is not defined or holds a key that store does not read."""
        if name not in self.entries:
            if not self.found:
                raise ProfileError(
                    f"{role} profile {name!r} is not defined: no profiles file at {self.origin} "
                    f"(give --profiles FILE, set ${PROFILES_ENV}, or a sidecar's "
                    "sync.profiles_file; see docs/sync.md)"
                )
            defined = ", ".join(sorted(self.entries)) or "none"
            raise ProfileError(
                f"{role} profile {name!r} is not defined in {self.origin} (it defines: {defined})"
            )
        settings = dict(self.entries[name])
        scheme = urlsplit(url).scheme
        known = KNOWN_SETTINGS.get(scheme)
        if known is not None:
            foreign = sorted(set(settings) - set(known))
            if foreign:
                raise ProfileError(
                    f"{role} profile {name!r} ({self.origin}) sets {', '.join(foreign)}, which "
                    f"{scheme}:// stores do not read (they read: {', '.join(known)})"
                )
        return settings


def default_profiles_path() -> Path:
    """``$ECO_SYNC_PROFILES``, else ``$XDG_CONFIG_HOME/eco/sync-profiles.yaml``
    (``~/.config/eco/sync-profiles.yaml``)."""
    if os.environ.get(PROFILES_ENV):
        return Path(os.environ[PROFILES_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "eco" / "sync-profiles.yaml"


def load_profiles(path: Path | None, *, explicit: bool = False) -> Profiles:
    """The profiles in ``path`` (None: :func:`default_profiles_path`).

    ConfigError (FILE:LINE: FIELD: why) for a file that is not valid, or that
    cannot be read when it was named (``explicit``, or ``$ECO_SYNC_PROFILES``);
    a default file that is not there gives no profiles (``found`` False).
    """
    if path is None:
        explicit = explicit or bool(os.environ.get(PROFILES_ENV))
        path = default_profiles_path()
    path = path.expanduser()
    if not explicit and not path.exists():
        return Profiles(str(path), {}, found=False)
    # pydantic (the file's model) is imported only for a file to read: about
    # 70 ms of every `eco sync run` start otherwise, and most name no profile.
    from sidecar._config_file import read_config_file
    from sidecar.sync._profile_models import ProfilesFile

    loaded = read_config_file(path, ProfilesFile)
    return Profiles(str(path), loaded.profiles)


def profile_settings(
    source: str,
    destination: str,
    source_profile: str,
    destination_profile: str,
    profiles: Callable[[], Profiles],
) -> dict[str, dict[str, str]]:
    """``SyncOptions.profiles`` for a run naming these profiles ("" for none);
    ``profiles`` is called only when one is named. ProfileError or ConfigError."""
    if not source_profile and not destination_profile:
        return {}
    found = profiles()
    out: dict[str, dict[str, str]] = {}
    if source_profile:
        out["source"] = found.settings(source_profile, source, "source")
    if destination_profile:
        out["destination"] = found.settings(destination_profile, destination, "destination")
    return out
