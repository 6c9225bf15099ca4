"""What a fresh interpreter imports: the SDK no server code; a running sidecar not
the general HTTP framework and client, nor the AMQP client (aio-pika) unless an
AMQP bridge starts.

aiohttp costs the sidecar process about 11 MB of resident memory (its budget
is 60 MB): the admin endpoints have their own small server, and the health
checker imports the general client only for the probes that need it
(``https://`` URLs). Each test runs a fresh interpreter, so that nothing else
loaded the modules it looks for.
"""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_sdk_loads_no_server_code() -> None:
    # (Which modules the SDK's code imports is checked by `make lint`'s layer contracts.)
    code = (
        "import sys, sdk, sdk.lowlevel;"
        "server = ('controlplane', 'sidecar', 'bus', 'serving', 'aiohttp', 'nats', 'aio_pika');"
        "bad = [m for m in sys.modules if m.split('.')[0] in server];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_PROGRAM = """
import sys
import eco.cli
from sidecar.config import SidecarConfig
import sidecar.app
import sidecar.admin
from sidecar.health import NetworkHealthChecker, parse_check

checker = NetworkHealthChecker()
checker.prepare(parse_check({"http": "http://127.0.0.1:1/health"}))
checker.prepare(parse_check({"tcp": "127.0.0.1:1"}))
print(",".join(sorted(name for name in sys.modules if name.split(".")[0] == "aiohttp")))
"""


def test_the_sidecar_does_not_import_aiohttp() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""


def test_an_https_probe_still_gets_the_general_client() -> None:
    program = (
        "import sys\n"
        "from sidecar.health import NetworkHealthChecker, parse_check\n"
        "NetworkHealthChecker().prepare(parse_check({'http': 'https://127.0.0.1:1/health'}))\n"
        "print('aiohttp' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "True"


_AMQP_PROGRAM = """
import sys
import eco.cli
import sidecar.app
from sidecar.config import parse_config

parse_config('''
bridges:
  - protocol: amqp
    url: amqp://127.0.0.1/
    queues: [{name: q}]
    inbound: [{queue: q, subject: "amqp.{routing_key}"}]
''')
amqp = ("aio_pika", "aiormq", "pamqp")
print(",".join(sorted(n for n in sys.modules if n.split(".")[0] in amqp)))
"""


def test_reading_an_amqp_bridge_config_does_not_import_the_amqp_client() -> None:
    """aio-pika is imported when an AMQP bridge starts, not before (nor without one)."""
    done = subprocess.run(
        [sys.executable, "-c", _AMQP_PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == ""
