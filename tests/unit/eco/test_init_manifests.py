"""The ways to run a template have the shape their tools read: compose files
and Kubernetes manifests checked with JSON Schemas of the parts the tools
require, the configurations embedded in ConfigMaps checked with the models,
and every ``eco`` command line (compose, Kubernetes, systemd) made of options
the command has — so a renamed flag fails here, not on a user's host."""

from __future__ import annotations

import configparser
import shlex
from pathlib import PurePosixPath
from typing import Any

import click
import jsonschema
import pytest
import yaml

from eco._init import TEMPLATES, render
from eco.cli import cli

NAME = "acme"
IMAGE = "acme/eco:"

_CONTAINER = {
    "type": "object",
    "required": ["name", "image", "args"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "image": {"type": "string", "minLength": 1},
        "args": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "ports": {
            "type": "array",
            "items": {"type": "object", "required": ["containerPort"]},
        },
        "volumeMounts": {
            "type": "array",
            "items": {"type": "object", "required": ["name", "mountPath"]},
        },
    },
}
_WORKLOAD_SPEC = {
    "type": "object",
    "required": ["selector", "template"],
    "properties": {
        "selector": {"type": "object", "required": ["matchLabels"]},
        "template": {
            "type": "object",
            "required": ["metadata", "spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["containers"],
                    "properties": {
                        "containers": {"type": "array", "minItems": 1, "items": _CONTAINER}
                    },
                }
            },
        },
    },
}
#: The parts of a Kubernetes object every manifest here must have.
MANIFEST = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "apiVersion": {"enum": ["v1", "apps/v1"]},
        "kind": {"enum": ["ConfigMap", "Service", "Deployment", "DaemonSet"]},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 63}},
        },
    },
    "allOf": [
        {
            "if": {"properties": {"kind": {"enum": ["Deployment", "DaemonSet"]}}},
            "then": {
                "required": ["spec"],
                "properties": {"apiVersion": {"const": "apps/v1"}, "spec": _WORKLOAD_SPEC},
            },
        },
        {
            "if": {"properties": {"kind": {"const": "Service"}}},
            "then": {
                "required": ["spec"],
                "properties": {"spec": {"type": "object", "required": ["selector", "ports"]}},
            },
        },
        {
            "if": {"properties": {"kind": {"const": "ConfigMap"}}},
            "then": {"required": ["data"]},
        },
    ],
}
#: A compose file: every service runs the template's image with an eco command.
COMPOSE = {
    "type": "object",
    "required": ["services"],
    "properties": {
        "name": {"type": "string"},
        "services": {
            "type": "object",
            "minProperties": 2,
            "additionalProperties": {
                "type": "object",
                "required": ["image", "command"],
                "properties": {
                    "image": {"type": "string"},
                    "command": {"type": "array", "items": {"type": "string"}},
                    "network_mode": {"type": "string"},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                    "volumes": {"type": "array", "items": {"type": "string"}},
                    "ports": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "volumes": {"type": "object"},
    },
}


def files(template: str) -> dict[str, str]:
    return {str(p): t for p, t in render(TEMPLATES[template], NAME).items()}


def check_eco_args(args: list[str]) -> None:
    """``args`` (after ``eco``) name a command and only options it has."""
    group = click.Context(cli)
    command = cli.get_command(group, args[0])
    assert command is not None, args
    known = {opt for param in command.params for opt in param.opts}
    for arg in args[1:]:
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in known, (args[0], arg, sorted(known))


def workloads(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in documents if d["kind"] in ("Deployment", "DaemonSet")}


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_kubernetes_manifests_have_the_required_shape(template: str) -> None:
    written = files(template)
    manifests = {p: t for p, t in written.items() if p.startswith("kubernetes/")}
    kinds: dict[str, list[str]] = {}
    for path, text in manifests.items():
        documents = list(yaml.safe_load_all(text))
        for document in documents:
            jsonschema.validate(document, MANIFEST)
            kinds.setdefault(PurePosixPath(path).stem, []).append(document["kind"])
        for workload in workloads(documents).values():
            for container in workload["spec"]["template"]["spec"]["containers"]:
                assert container["image"].startswith(IMAGE)
                check_eco_args(container["args"])
            selector = workload["spec"]["selector"]["matchLabels"]
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), path
    assert "Deployment" in kinds["controlplane"] and "Service" in kinds["controlplane"]
    assert "DaemonSet" in kinds["sidecar"]
    plane = workloads(list(yaml.safe_load_all(manifests["kubernetes/controlplane.yaml"])))
    assert plane["Deployment"]["spec"]["replicas"] > 1  # replicas, on a shared (etcd) store
    if template == "cloud":
        assert kinds["gateway"] == ["ConfigMap", "Deployment", "Service"]


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_the_configurations_in_configmaps_are_valid(template: str) -> None:
    from sidecar.config import SidecarConfig
    from sidecar.gateway.config import GatewayConfig

    models = {"sidecar.yaml": SidecarConfig, "gateway.yaml": GatewayConfig}
    seen = set()
    for path, text in files(template).items():
        if not path.startswith("kubernetes/"):
            continue
        for document in yaml.safe_load_all(text):
            for key, embedded in (document.get("data") or {}).items():
                config = yaml.safe_load(embedded)
                # The files the pod mounts are not here: the rest must be valid.
                link = config["controlplane"]
                assert link.pop("ca_file").startswith("/etc/eco/")
                assert link.pop("token_file").startswith("/etc/eco/")
                models[key].model_validate(config)
                seen.add(key)
    assert "sidecar.yaml" in seen
    assert ("gateway.yaml" in seen) == (template == "cloud")


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_compose_file_has_the_required_shape(template: str) -> None:
    compose = yaml.safe_load(files(template)["compose.yaml"])
    jsonschema.validate(compose, COMPOSE)
    services = compose["services"]
    assert {"controlplane", "sidecar", "apply"} <= set(services)
    assert ("gateway" in services) == (template == "cloud")
    assert services["controlplane"]["build"]["dockerfile"] == "Containerfile"
    for name, service in services.items():
        assert service["image"].startswith(IMAGE)
        if name != "controlplane":  # the config's 127.0.0.1 addresses hold in one namespace
            assert service["network_mode"] == "service:controlplane"
        if name != "apply":
            check_eco_args(service["command"])
    for volume in services["sidecar"]["volumes"]:
        source = volume.split(":")[0]
        assert not source.startswith("./") or source == "./config"
    # The apply container waits for the control plane, then applies apply/.
    assert "eco apply -f /etc/eco/apply" in services["apply"]["command"][0]


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_systemd_units_run_eco_commands_it_has(template: str) -> None:
    units = {p: t for p, t in files(template).items() if p.startswith("systemd/")}
    expected = {"controlplane", "sidecar"} | ({"gateway"} if template == "cloud" else set())
    assert set(units) == {f"systemd/{NAME}-{part}.service" for part in expected}
    for path, text in units.items():
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(text)
        assert {"Unit", "Service", "Install"} <= set(parser.sections()), path
        service = parser["Service"]
        assert service["User"] == "eco" and service["Restart"] == "on-failure"
        for key in ("ExecStart", "ExecStartPre"):
            if key not in service:
                continue
            words = shlex.split(service[key].replace("\\\n", " "))
            assert words[0] == "/opt/eco/venv/bin/eco", path
            check_eco_args(words[1:])
            if "--config" in words:
                config = words[words.index("--config") + 1]
                # install.sh copies config/ to /etc/eco/NAME/config/
                assert config.startswith(f"/etc/eco/{NAME}/config/")
                assert config.removeprefix(f"/etc/eco/{NAME}/") in files(template)
