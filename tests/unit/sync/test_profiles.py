"""Named profiles: the profiles file checked with line and field, names looked
up with messages that say which profile and which file, keys checked against
the store a profile is used for, and a job's profile names resolved by the
executor on its own host."""

from __future__ import annotations

from pathlib import Path

import pytest
from ecosystem.v1 import sync_pb2 as spb

from controlplane.sync._validation import job_violations, profile_name_violations
from sidecar._config_file import ConfigError
from sidecar.config import parse_config
from sidecar.sync import ProfileError, Profiles, SyncHostConfig, load_profiles, profile_settings
from sidecar.sync._profiles import _NAME, KNOWN_SETTINGS, default_profiles_path
from sidecar.sync.executor import options_of

ROOT = Path(__file__).resolve().parents[3]

GOOD = """\
profiles:
  minio:
    endpoint_url: http://127.0.0.1:9000
    access_key_id: eco
    secret_access_key: s3cr3t
  nas:
    key_file: /etc/eco/nas
    port: 2222
    etag_is_md5: false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sync-profiles.yaml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_every_value_a_string(tmp_path: Path) -> None:
    profiles = load_profiles(write(tmp_path, GOOD))
    assert profiles.found and profiles.origin == str(tmp_path / "sync-profiles.yaml")
    assert profiles.entries["minio"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert profiles.entries["nas"] == {
        "key_file": "/etc/eco/nas",
        "port": "2222",
        "etag_is_md5": "false",
    }


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "profiles:\n  minio:\n    endpoint_url: http://x\n    acess_key_id: a\n",
            ":4: profiles.minio.acess_key_id:",
            "'acess_key_id' is not a setting of any store (docs/sync-connectors.md lists them); "
            "did you mean 'access_key_id'?",
        ),
        (
            "profiles:\n  ok:\n    port: 1\n  'two words':\n    port: 2\n",
            ":4: profiles.two words:",
            "'two words' is not a valid profile name",
        ),
        (
            "profiles:\n  nas:\n    port: [22]\n",
            ":3: profiles.nas.port:",
            "a setting's value is a string or a number",
        ),
        ("profiles:\n  nas: {}\n", ":2: profiles.nas:", "a profile needs at least one setting"),
        ("profiles:\n  nas: key_file\n", ":2: profiles.nas:", "a profile is a mapping"),
        ("profile:\n  nas:\n    port: 22\n", ":1: profile:", "did you mean 'profiles'?"),
        (
            "profiles:\n  a:\n    port: 1\n  a:\n    port: 2\n",
            ":4:",
            "duplicate",
        ),
    ],
)
def test_a_bad_file_names_the_line_and_the_field(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_profiles(path)
    text_of = str(caught.value)
    assert text_of.startswith(f"{path}{where}"), text_of
    assert message in text_of


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  a:\n    prot: 1\n  b:\n    regoin: x\n")
    with pytest.raises(ConfigError) as caught:
        load_profiles(path)
    assert [line.split(": ")[0:2] for line in caught.value.lines()] == [
        [f"{path}:3", "profiles.a.prot"],
        [f"{path}:5", "profiles.b.regoin"],
    ]


def test_a_name_not_defined_names_the_profile_and_the_file(tmp_path: Path) -> None:
    profiles = load_profiles(write(tmp_path, GOOD))
    with pytest.raises(ProfileError) as caught:
        profiles.settings("minoi", "s3://bucket/x", "destination")
    assert str(caught.value) == (
        f"destination profile 'minoi' is not defined in {tmp_path / 'sync-profiles.yaml'} "
        "(it defines: minio, nas)"
    )


def test_no_file_at_the_default_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECO_SYNC_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert default_profiles_path() == tmp_path / "config" / "eco" / "sync-profiles.yaml"
    profiles = load_profiles(None)
    assert not profiles.found
    with pytest.raises(ProfileError, match="source profile 'minio' is not defined: no profiles"):
        profiles.settings("minio", "s3://b", "source")
    # A run naming no profile never needs the file.
    assert profile_settings("s3://a", "s3://b", "", "", lambda: pytest.fail("read")) == {}


def test_a_named_file_must_be_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_profiles(tmp_path / "nope.yaml", explicit=True)
    monkeypatch.setenv("ECO_SYNC_PROFILES", str(tmp_path / "env.yaml"))
    assert default_profiles_path() == tmp_path / "env.yaml"
    with pytest.raises(ConfigError, match=r"env\.yaml: cannot read"):
        load_profiles(None)


def test_a_profile_is_checked_against_the_store_it_is_used_for(tmp_path: Path) -> None:
    profiles = load_profiles(write(tmp_path, GOOD))
    assert profiles.settings("minio", "s3://bucket", "source")["access_key_id"] == "eco"
    with pytest.raises(ProfileError) as caught:
        profiles.settings("minio", "az://container", "source")
    assert "sets access_key_id, endpoint_url, secret_access_key, which az:// stores do not" in str(
        caught.value
    )
    assert profile_settings("file:///a", "s3://b/c", "", "minio", lambda: profiles) == {
        "destination": dict(profiles.entries["minio"])
    }


def test_a_sidecar_config_takes_a_file_or_inline_profiles(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = parse_config(f"sync:\n  profiles_file: {path}\n")
    assert config.sync.load_profiles().entries["nas"]["port"] == "2222"
    inline = parse_config("sync:\n  profiles:\n    m:\n      region: eu-west-1\n")
    loaded = inline.sync.load_profiles()
    assert loaded.entries == {"m": {"region": "eu-west-1"}}
    assert loaded.origin == "the sidecar config's sync.profiles"
    assert parse_config("node: {id: n1}\n").sync == SyncHostConfig()
    with pytest.raises(ConfigError) as caught:
        parse_config("node: {id: n1}\nsync:\n  profiles:\n    m:\n      endpont_url: x\n")
    assert str(caught.value).startswith("sidecar.yaml:5: sync.profiles.m.endpont_url: ")
    with pytest.raises(ConfigError, match="give profiles_file or profiles, not both"):
        parse_config(f"sync:\n  profiles_file: {path}\n  profiles: {{m: {{port: 1}}}}\n")


def test_the_executor_resolves_a_jobs_profiles_on_its_host(tmp_path: Path) -> None:
    profiles = load_profiles(write(tmp_path, GOOD))
    run = spb.SyncRun(
        job="up",
        number=1,
        spec=spb.SyncJob(
            name="up",
            source="file:///data",
            destination="s3://bucket/data",
            destination_profile="minio",
        ),
    )
    options = options_of(run, tmp_path, lambda: profiles)
    assert options.profiles == {"destination": dict(profiles.entries["minio"])}
    run.spec.source_profile = "nas"  # an SFTP profile on a file:// side
    with pytest.raises(ProfileError, match="source profile 'nas'"):
        options_of(run, tmp_path, lambda: profiles)
    run.spec.source_profile = "gone"
    with pytest.raises(ProfileError, match="'gone' is not defined in"):
        options_of(run, tmp_path, lambda: profiles)
    assert (
        options_of(
            spb.SyncRun(job="x", spec=spb.SyncJob(source="file:///a", destination="file:///b")),
            tmp_path,
            lambda: Profiles("x", found=False),
        ).profiles
        == {}
    )


@pytest.mark.parametrize(
    "name", ["minio", "nas-1", "a.b_c", "9", "x" * 64, "", "-a", "a b", "x" * 65, "ü"]
)
def test_the_control_plane_takes_the_names_the_hosts_take(name: str) -> None:
    host_takes = _NAME.fullmatch(name) is not None
    assert (not profile_name_violations("f", name)) == (host_takes or name == "")


def test_a_job_with_a_bad_profile_name_is_refused_field_by_field() -> None:
    job = spb.SyncJob(
        name="j",
        source="file:///a",
        destination="file:///b",
        every_seconds=60,
        on_node="n1",
        source_profile="two words",
        destination_profile="-x",
    )
    fields = {v.field for v in job_violations(job)}
    assert fields == {"job.source_profile", "job.destination_profile"}


def test_every_known_setting_is_documented() -> None:
    docs = (ROOT / "docs" / "sync-connectors.md").read_text()
    for scheme, keys in KNOWN_SETTINGS.items():
        for key in keys:
            assert f"`{key}`" in docs, (scheme, key)


def test_an_apply_document_carries_the_names_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    """``eco apply``: a SyncJob document's profile names go into the job it
    writes, and a job read back gives the same document (no endless diff)."""
    import eco._kinds_named as kinds
    from eco._documents import SyncJobDocument

    document = SyncJobDocument.model_validate(
        {
            "apiVersion": "ecosystem/v1",
            "kind": "SyncJob",
            "metadata": {"name": "up"},
            "spec": {
                "source": "file:///data",
                "destination": "s3://backup/data",
                "on_node": "nas-1",
                "every": "1h",
                "destination_profile": "minio",
            },
        }
    )
    handler = kinds.SyncJobHandler()
    [unit] = handler.units(document)
    assert unit.body["spec"]["destination_profile"] == "minio"
    assert "source_profile" not in unit.body["spec"]
    sent: list[spb.SyncJob] = []

    def call(settings: object, method: str, request: object, **_: object) -> object:
        if method == "CreateSyncJob":
            assert isinstance(request, spb.CreateSyncJobRequest)
            sent.append(request.job)
            return spb.CreateSyncJobResponse(job=request.job)
        return spb.ListSyncJobsResponse(jobs=sent)

    monkeypatch.setattr(kinds, "call", call)
    monkeypatch.setattr(kinds, "conditional", lambda s, m, r: call(s, m, r))
    handler.write(None, unit, None, "default")  # type: ignore[arg-type]
    assert sent[0].destination_profile == "minio" and sent[0].source_profile == ""
    [live] = handler.read(None)  # type: ignore[arg-type]
    assert live.body == unit.body

    with pytest.raises(ValueError, match="destination_profile"):
        SyncJobDocument.model_validate(
            {
                "apiVersion": "ecosystem/v1",
                "kind": "SyncJob",
                "metadata": {"name": "up"},
                "spec": {
                    **document.spec.model_dump(exclude_none=True),
                    "destination_profile": "a b",
                },
            }
        )
