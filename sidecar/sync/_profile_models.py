"""The pydantic models of sync profiles: a profiles file, and a sidecar's
``sync:`` section (:mod:`sidecar.sync._profiles` says what they hold). Kept
apart so that a run naming no profile never imports pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

from sidecar._config_file import Problems
from sidecar.sync._profiles import Profiles, _checked_profiles, load_profiles

__all__ = ["ProfilesFile", "SyncHostConfig"]


class ProfilesFile(BaseModel):
    """A profiles file: ``profiles: {NAME: {KEY: VALUE, …}, …}``."""

    # The models' validators are built when a profiles file or a sidecar
    # config is first validated (``defer_build``), not when ``eco sync run``
    # imports this module: most runs name no profile.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    profiles: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> Self:
        problem = Problems()
        checked = _checked_profiles(self.profiles, ("profiles",), problem)
        problem.raise_if_any("ProfilesFile")
        object.__setattr__(self, "profiles", checked)
        return self


class SyncHostConfig(BaseModel):
    """A sidecar's ``sync:`` settings: where the sync jobs it runs find their
    named profiles. At most one of ``profiles_file`` and ``profiles``; with
    neither, ``$ECO_SYNC_PROFILES`` and then the default path apply."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    #: a profiles file, read each time a run names a profile
    profiles_file: Path | None = None
    #: or the profiles themselves, inline
    profiles: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        problem = Problems()
        if self.profiles is not None:
            if self.profiles_file is not None:
                problem(("profiles",), "give profiles_file or profiles, not both")
            checked = _checked_profiles(self.profiles, ("profiles",), problem)
            object.__setattr__(self, "profiles", checked)
        problem.raise_if_any("SyncHostConfig")
        return self

    def load_profiles(self) -> Profiles:
        """The profiles as of now (the file read again); ConfigError for a bad file."""
        if self.profiles is not None:
            return Profiles("the sidecar config's sync.profiles", self.profiles)
        if self.profiles_file is not None:
            return load_profiles(self.profiles_file, explicit=True)
        return load_profiles(None)
