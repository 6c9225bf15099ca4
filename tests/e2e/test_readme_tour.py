"""The README's five-minute tour, followed as a reader would: its commands in
order against a real `eco dev`, then its own sidecar and its Python snippets,
each output checked for what the README says it shows.

The commands are read from README.md when the test runs and each must match a
step below, in order: a command added to the tour, changed or removed fails
this test until its check is written, so the README cannot drift from the
product."""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_cli import ECO
from tests.e2e.test_templates import DevProcess
from tests.harness.ports import free_port
from tests.harness.readme import fenced_blocks, readme_sidecar_config

pytestmark = pytest.mark.e2e

# The addresses the README's commands use (eco dev's defaults, and the README
# sidecar's own): each is rewritten to a free port of the test's, in the
# commands, the heredoc and the Python snippets alike.
README_ADDRESSES = {
    "controlplane": "127.0.0.1:7400",
    "controlplane admin": "127.0.0.1:7401",
    "dev sidecar": "127.0.0.1:7410",
    "dev sidecar admin": "127.0.0.1:7411",
    "my sidecar": "127.0.0.1:7420",
    "my sidecar admin": "127.0.0.1:7421",
}

TOUR_START = "take the five-minute tour:"
PYTHON_START = "From Python:"
PYTHON_END = "## Console"

# Lines a reader types that are not commands of the product.
SKIPPED = {"source .venv/bin/activate"}

# A reader's pause after starting something in the background that prints
# nothing until something happens (a subscriber): long enough for it to subscribe
SETTLE = 5.0  # a loaded CI machine starts a Python process in 1-2 s


@dataclass
class Step:
    """One command of the README: as written (comment removed), whether it
    runs in the background, and a heredoc's body."""

    command: str
    background: bool = False
    heredoc: str | None = None


@dataclass
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str


class Background:
    """A command a reader left running with ``&``, its output in files."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], name: str) -> None:
        self.out = cwd / f"{name}.out"
        self.err = cwd / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.stdout().splitlines()

    def wait_for(self, text: str, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while text not in self.stdout():
            assert self.proc.poll() is None or text in self.stdout(), self.describe("exited")
            assert time.monotonic() < deadline, self.describe(f"printed no {text!r}")
            time.sleep(0.05)
        return self.lines()

    def describe(self, what: str) -> str:
        return f"{what}:\n{self.stdout()}\n{self.err.read_text(errors='replace')}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def comment_start(line: str) -> int:
    """Where a shell comment starts in `line` (outside quotes), or its length."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return len(line)


def readme_steps(block: str) -> Iterator[Step]:
    lines = iter(block.splitlines())
    for line in lines:
        command = line[: comment_start(line)].strip()
        if not command or command in SKIPPED:
            continue
        if "<<'EOF'" in command:
            body = []
            for heredoc_line in lines:
                if heredoc_line == "EOF":
                    break
                body.append(heredoc_line + "\n")
            yield Step(command, heredoc="".join(body))
        elif command.endswith("&"):
            yield Step(command[:-1].strip(), background=True)
        else:
            yield Step(command)


def readme_tour() -> list[Step]:
    """The commands of the tour's block and of the own-sidecar block, in order."""
    tour = fenced_blocks("sh", TOUR_START)[0]
    (sidecar,) = [b for b in fenced_blocks("sh", TOUR_START) if "my-sidecar.yaml <<" in b]
    return [*readme_steps(tour), *readme_steps(sidecar)]


class Tour:
    """What a reader has in their terminal: the working directory `eco dev`
    runs in, the environment, what they left running, what they saw."""

    def __init__(self, cwd: Path, addresses: dict[str, str]) -> None:
        self.cwd = cwd
        self.addresses = addresses  # README address -> the test's
        self.env = {
            **os.environ,
            "ECO_SERVER": self.address("controlplane"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        self.background: list[Background] = []
        self.watch: Background | None = None
        self.events: Background | None = None
        self.revisions: dict[str, int] = {}  # instance id -> the revision its last write printed
        self.instead: dict[str, str] = {}  # what the README says to put in place of a value

    def address(self, name: str) -> str:
        return self.addresses[README_ADDRESSES[name]]

    def rewrite(self, text: str) -> str:
        for readme, ours in {**self.addresses, **self.instead}.items():
            text = text.replace(readme, ours)
        return text

    def argv(self, command: str) -> list[str]:
        argv = shlex.split(self.rewrite(command))
        assert argv[0] == "eco", f"the README runs {argv[0]!r}: this test runs only eco here"
        return [ECO, *argv[1:]]

    def run(self, step: Step) -> Ran | Background:
        if step.heredoc is not None:
            target = shlex.split(step.command)
            assert target[:2] == ["cat", ">"], step.command
            (self.cwd / target[2]).write_text(self.rewrite(step.heredoc))
            return Ran(step.command, 0, "", "")
        if step.command.startswith("curl "):
            return self.http_get(step.command)
        if step.background:
            started = Background(
                self.argv(step.command), self.cwd, self.env, f"background-{len(self.background)}"
            )
            self.background.append(started)
            return started
        result = subprocess.run(
            self.argv(step.command),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return Ran(step.command, result.returncode, result.stdout, result.stderr)

    def http_get(self, command: str) -> Ran:
        """``curl -s ADDRESS/PATH [| grep WORD]``, through curl when it is
        installed, else the same GET in Python; grep is done here."""
        curl, *filters = [shlex.split(part) for part in self.rewrite(command).split("|")]
        assert curl[:2] == ["curl", "-s"] and len(curl) == 3, command
        if shutil.which("curl"):
            got = subprocess.run(curl, capture_output=True, text=True, timeout=10, check=False)
            assert got.returncode == 0, (command, got.stderr)
            body = got.stdout
        else:
            with urllib.request.urlopen(f"http://{curl[2]}", timeout=10) as response:
                body = response.read().decode()
        returncode = 0
        for grep in filters:
            assert grep[0] == "grep" and len(grep) == 2, command
            kept = [line for line in body.splitlines() if grep[1] in line]
            body = "".join(line + "\n" for line in kept)
            returncode = 0 if kept else 1
        return Ran(command, returncode, body, "")

    def eco_json(self, *args: str) -> Any:
        result = subprocess.run(
            [ECO, "-o", "json", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def web_ids(self) -> list[str]:
        return sorted(i["id"] for i in self.eco_json("service", "get", "web")["instances"])

    def stop(self) -> None:
        for started in reversed(self.background):
            started.stop()


# -- what a reader expects from each command ----------------------------------------


def ok(ran: Ran | Background) -> Ran:
    assert isinstance(ran, Ran), f"{ran} ran in the background"
    assert ran.returncode == 0, (ran.command, ran.stdout, ran.stderr)
    return ran


def started(ran: Ran | Background) -> Background:
    assert isinstance(ran, Background), f"{ran} did not run in the background"
    return ran


def registered(tour: Tour, ran: Ran | Background, instance: str, address: str) -> int:
    """``registered web/ID at ADDRESS (revision R)``; the watcher, when one
    runs, prints that PUT with that revision."""
    line = ok(ran).stdout.strip()
    assert line.startswith(f"registered web/{instance} at {address} (revision "), line
    revision = int(line.rsplit(" ", 1)[1].rstrip(")"))
    tour.revisions[instance] = revision
    if tour.watch is not None:
        seen = tour.watch.wait_for(f'"revision":{revision},', timeout=10)
        event = json.loads(next(line for line in seen if f'"revision":{revision},' in line))
        assert (event["type"], event["instance"]["id"]) == ("PUT", instance)
    return revision


def register_web_1(tour: Tour, ran: Ran | Background) -> None:
    registered(tour, ran, "web-1", "10.0.0.1:8080")


def register_web_2(tour: Tour, ran: Ran | Background) -> None:
    registered(tour, ran, "web-2", "10.0.0.2:8080")
    assert tour.web_ids() == ["web-1", "web-2"]


def service_list(tour: Tour, ran: Ran | Background) -> None:
    header, *rows = ok(ran).stdout.splitlines()
    assert header.split() == [
        "NAMESPACE", "NAME", "INSTANCES", "PASSING", "WARNING", "CRITICAL", "UNKNOWN",
    ]  # fmt: skip
    assert [row.split() for row in rows] == [["default", "web", "2", "2", "0", "0", "0"]]


def service_get(tour: Tour, ran: Ran | Background) -> None:
    lines = ok(ran).stdout.splitlines()
    assert lines[0].startswith("service web (namespace default): 2 instance(s): 2 passing")
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("web-")}
    assert sorted(rows) == ["web-1", "web-2"]
    assert rows["web-1"][1:3] == ["10.0.0.1:8080", "PASSING"] and "eu-1a" in rows["web-1"]
    assert rows["web-2"][-2:] == ["v2", "owner=team-a"]


def service_get_json(tour: Tour, ran: Ran | Background) -> None:
    got = json.loads(ok(ran).stdout)
    instances = {i["id"]: i for i in got["instances"]}
    assert sorted(instances) == ["web-1", "web-2"]
    assert (instances["web-1"]["tags"], instances["web-1"]["zone"]) == (["v1"], "eu-1a")
    assert instances["web-2"]["metadata"] == {"owner": "team-a"}
    assert {i["liveness"] for i in instances.values()} == {"PERSISTENT"}


def watch_web(tour: Tour, ran: Ran | Background) -> None:
    tour.watch = started(ran)
    lines = [json.loads(line) for line in tour.watch.wait_for("SNAPSHOT_END")]
    assert [e["type"] for e in lines] == ["RESYNC", "PUT", "PUT", "SNAPSHOT_END"]
    assert sorted(e["instance"]["id"] for e in lines if e["type"] == "PUT") == ["web-1", "web-2"]


def register_web_3(tour: Tour, ran: Ran | Background) -> None:
    revision = registered(tour, ran, "web-3", "10.0.0.3:8080")
    # "put one printed above in place of 5": this one.
    tour.instead["--since 5"] = f"--since {revision}"


def deregister_web_1(tour: Tour, ran: Ran | Background) -> None:
    line = ok(ran).stdout.strip()
    assert line.startswith("deregistered web/web-1 (revision "), line
    revision = int(line.rsplit(" ", 1)[1].rstrip(")"))
    tour.revisions["deregistered web-1"] = revision
    assert tour.watch is not None
    seen = tour.watch.wait_for(f'"revision":{revision},', timeout=10)
    event = json.loads(next(line for line in seen if f'"revision":{revision},' in line))
    assert (event["type"], event["instance"]["id"]) == ("DELETE", "web-1")
    assert tour.web_ids() == ["web-2", "web-3"]


def update_web_3(tour: Tour, ran: Ran | Background) -> None:
    registered(tour, ran, "web-3", "10.0.0.3:8080")
    assert tour.web_ids() == ["web-2", "web-3"]  # updated, not a duplicate
    tags = {i["id"]: i["tags"] for i in tour.eco_json("service", "get", "web")["instances"]}
    assert tags["web-3"] == ["v3"]


def watch_since(tour: Tour, ran: Ran | Background) -> None:
    events = [json.loads(line) for line in ok(ran).stdout.splitlines()]
    # Only what happened after web-3's registration: no snapshot.
    assert [(e["type"], e["instance"]["id"], e["revision"]) for e in events] == [
        ("DELETE", "web-1", tour.revisions["deregistered web-1"]),
        ("PUT", "web-3", tour.revisions["web-3"]),
    ]


def bad_port(tour: Tour, ran: Ran | Background) -> None:
    assert isinstance(ran, Ran)
    assert ran.returncode == 2, (ran.stdout, ran.stderr)
    assert "'--port'" in ran.stderr and "70000" in ran.stderr, ran.stderr
    addresses = [i["address"] for i in tour.eco_json("service", "get", "web")["instances"]]
    assert "10.0.0.9" not in addresses


def healthz(tour: Tour, ran: Ran | Background) -> None:
    assert ok(ran).stdout.strip() == "SERVING"


def metrics(tour: Tour, ran: Ran | Background) -> None:
    lines = ok(ran).stdout.splitlines()
    assert all("eco_" in line for line in lines)
    assert any(
        line.startswith('eco_controlplane_rpcs_total{code="OK",method="RegisterInstance"}')
        for line in lines
    ), lines


def _node_list(ran: Ran | Background) -> list[list[str]]:
    """The sidecars' rows of ``eco node list`` (node, state), checking that
    the xDS clients' part below them says none has connected."""
    sidecars, _, xds = ok(ran).stdout.partition("\n\n")
    header, *rows = sidecars.splitlines()
    assert header.split()[:2] == ["NODE", "STATE"]
    assert xds.strip() == "no xDS clients have connected", xds
    return [row.split()[:2] for row in rows]


def node_list_dev(tour: Tour, ran: Ran | Background) -> None:
    assert _node_list(ran) == [["dev", "SYNCED"]]


def wait_revision(tour: Tour, ran: Ran | Background) -> None:
    out = ok(ran).stdout
    assert "no connected sidecar is affected" in out and "nothing to wait for" in out, out


def dev_status(tour: Tour, ran: Ran | Background) -> None:
    status = json.loads(ok(ran).stdout)
    assert status["node"]["id"] == "dev" and status["connected"] is True
    assert status["local_api"] == tour.address("dev sidecar")
    assert status["controlplane"]["address"] == tour.address("controlplane")


def stream_add(tour: Tour, ran: Ran | Background) -> None:
    assert ok(ran).stdout.startswith("stream orders captures orders.> (0 message(s)")


def publish(tour: Tour, ran: Ran | Background) -> None:
    assert ok(ran).stdout.strip() == "published to orders.eu.created: stream orders, sequence 1"


def subscribe_durable(tour: Tour, ran: Ran | Background) -> None:
    (message,) = [json.loads(line) for line in ok(ran).stdout.splitlines()]
    assert (message["subject"], message["id"], message["stream"]) == (
        "orders.eu.created", "order-1", "orders",
    )  # fmt: skip
    assert json.loads(message["data"]) == {"id": 1}


def subscribe_events(tour: Tour, ran: Ran | Background) -> None:
    tour.events = started(ran)
    time.sleep(SETTLE)
    assert tour.events.proc.poll() is None, tour.events.describe("exited")


def register_event(tour: Tour, ran: Ran | Background) -> None:
    revision = registered(tour, ran, "web-3", "10.0.0.3:8080")
    assert tour.web_ids() == ["web-2", "web-3"]
    assert tour.events is not None
    try:
        tour.events.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError(tour.events.describe("no event in 20 s")) from None
    assert tour.events.proc.returncode == 0, tour.events.describe("failed")
    (message,) = [json.loads(line) for line in tour.events.lines()]
    assert message["subject"] == "eco.events.default.web"
    event = json.loads(message["data"])
    assert (event["type"], event["revision"], event["instance"]["id"]) == (
        "PUT", revision, "web-3",
    )  # fmt: skip


def write_config(tour: Tour, ran: Ran | Background) -> None:
    ok(ran)
    written = (tour.cwd / "my-sidecar.yaml").read_text()
    assert written == tour.rewrite(readme_sidecar_config())
    assert "127.0.0.1:74" not in written.replace(tour.address("controlplane"), "")


def check_config(tour: Tour, ran: Ran | Background) -> None:
    assert ok(ran).stdout.startswith("my-sidecar.yaml: ok — node my-host, 1 local service(s)")


def run_sidecar(tour: Tour, ran: Ran | Background) -> None:
    sidecar = started(ran)
    # A reader waits for it to be up: its admin answers and it is connected.
    status_url = f"http://{tour.address('my sidecar admin')}/status"
    deadline = time.monotonic() + 20
    while not _connected(status_url):
        assert sidecar.proc.poll() is None, sidecar.describe("my sidecar exited")
        assert time.monotonic() < deadline, sidecar.describe("my sidecar not connected")
        time.sleep(0.1)


def _connected(status_url: str) -> bool:
    """Whether the sidecar's /status says it is connected (False while it does not answer)."""
    try:
        with urllib.request.urlopen(status_url, timeout=2) as response:
            return bool(json.loads(response.read())["connected"])
    except OSError:
        return False


def node_list_both(tour: Tour, ran: Ran | Background) -> None:
    assert _node_list(ran) == [["dev", "SYNCED"], ["my-host", "SYNCED"]]


def my_status(tour: Tour, ran: Ran | Background) -> None:
    status = json.loads(ok(ran).stdout)
    assert status["node"]["id"] == "my-host" and status["connected"] is True
    assert status["local_api"] == tour.address("my sidecar")


Check = Callable[[Tour, Ran | Background], None]

# The tour, command by command as the README writes it, and its check.
STEPS: list[tuple[str, Check]] = [
    ("eco service register web --address 10.0.0.1 --port 8080 --id web-1"
     " --tag v1 --zone eu-1a", register_web_1),
    ("eco service register web --address 10.0.0.2 --port 8080 --id web-2"
     " --tag v2 --meta owner=team-a", register_web_2),
    ("eco service list", service_list),
    ("eco service get web", service_get),
    ("eco service get web -o json", service_get_json),
    ("eco service watch web", watch_web),
    ("eco service register web --address 10.0.0.3 --port 8080 --id web-3", register_web_3),
    ("eco service deregister web --id web-1", deregister_web_1),
    ("eco service register web --address 10.0.0.3 --port 8080 --tag v3", update_web_3),
    ("eco service watch web --since 5 --timeout 2", watch_since),
    ("eco service register web --address 10.0.0.9 --port 70000", bad_port),
    ("curl -s 127.0.0.1:7401/healthz", healthz),
    ("curl -s 127.0.0.1:7401/metrics | grep eco_", metrics),
    ("eco node list", node_list_dev),
    ("eco wait --revision 5 --timeout 5", wait_revision),
    ("curl -s 127.0.0.1:7411/status", dev_status),
    ("eco bus stream add orders --subjects 'orders.>'", stream_add),
    ("eco bus publish orders.eu.created '{\"id\": 1}' --id order-1", publish),
    ("eco bus subscribe 'orders.>' --durable worker --count 1", subscribe_durable),
    ("eco bus subscribe 'eco.events.>' --count 1", subscribe_events),
    ("eco service register web --address 10.0.0.3 --port 8080", register_event),
    ("cat > my-sidecar.yaml <<'EOF'", write_config),
    ("eco sidecar --config my-sidecar.yaml --check", check_config),
    ("eco sidecar --config my-sidecar.yaml", run_sidecar),
    ("eco node list", node_list_both),
    ("curl -s 127.0.0.1:7421/status", my_status),
]  # fmt: skip


def python_watch(tour: Tour, snippet: Background) -> None:
    lines = snippet.wait_for("SNAPSHOT_END")
    puts = [line for line in lines if line.startswith("PUT ")]
    assert any("service='api'" in p and "address='10.0.0.5'" in p for p in puts), lines
    assert lines[0].startswith("RESYNC ")
    # Kept alive while it runs: the instance is there.
    addresses = [i["address"] for i in tour.eco_json("service", "get", "api")["instances"]]
    assert "10.0.0.5" in addresses


def python_pick(tour: Tour, ran: Ran) -> None:
    resolved, picked = ok(ran).stdout.splitlines()
    assert sorted(ast.literal_eval(resolved)) == ["10.0.0.2:8080", "10.0.0.3:8080"]
    instance, address, port = picked.split()
    assert (address, port) in {("10.0.0.2", "8080"), ("10.0.0.3", "8080")}
    assert instance == {"10.0.0.2": "web-2", "10.0.0.3": "web-3"}[address]


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    steps = readme_tour()
    commands = [s.command for s in steps]
    for i, (command, _) in enumerate(STEPS):
        assert i < len(commands), f"the README's tour no longer has {command!r}: update STEPS"
        assert commands[i] == command, (
            f"README tour command {i + 1} is {commands[i]!r}; this test checks {command!r} "
            "there: write the check for the README's command (STEPS)"
        )
    assert len(commands) == len(STEPS), f"README commands with no check: {commands[len(STEPS) :]}"
    assert [s.background for s in steps].count(True) == 3  # the watch, the events, the sidecar
    snippets = fenced_blocks("python", PYTHON_START, PYTHON_END)
    assert len(snippets) == 2, "a README Python snippet with no check: add it here"

    addresses = {readme: f"127.0.0.1:{free_port()}" for readme in README_ADDRESSES.values()}
    tour = Tour(tmp_path, addresses)
    dev = DevProcess(
        tmp_path,
        "--listen", tour.address("controlplane"),
        "--admin-listen", tour.address("controlplane admin"),
        "--sidecar-listen", tour.address("dev sidecar"),
        "--sidecar-admin", tour.address("dev sidecar admin"),
    )  # fmt: skip
    try:
        dev.wait_ready()
        for step, (_, check) in zip(steps, STEPS, strict=True):
            check(tour, tour.run(step))

        watching, picking = (tour.rewrite(snippet) for snippet in snippets)
        (tmp_path / "watching.py").write_text(watching)
        (tmp_path / "picking.py").write_text(picking)
        snippet = Background([sys.executable, "watching.py"], tmp_path, tour.env, "python-watch")
        tour.background.append(snippet)
        python_watch(tour, snippet)
        result = subprocess.run(
            [sys.executable, "picking.py"],
            cwd=tmp_path,
            env=tour.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        python_pick(tour, Ran("picking.py", result.returncode, result.stdout, result.stderr))
    finally:
        tour.stop()
        stopped = dev.stop()
    assert stopped == 0, dev.log.read_text()
    assert (tmp_path / ".eco" / "controlplane.db").exists()  # `.eco/` where eco dev ran
