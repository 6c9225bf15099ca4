"""Every store the sync tests run against; ``target`` is each in turn."""

from __future__ import annotations

import pytest

from tests.harness.cloud_storage import (  # noqa: F401 - fixtures, for ``target``
    azure_target,
    azurite_server,
    gcs_server,
    gcs_target,
    moto_server,
    s3_target,
)
from tests.harness.storage import (  # noqa: F401 - fixtures, for ``target``
    STORE_NAMES,
    StoreTarget,
    file_target,
    sftp_server,
    sftp_target,
)


@pytest.fixture(params=STORE_NAMES)
def target(request: pytest.FixtureRequest) -> StoreTarget:
    """A fresh, empty root on each store in turn."""
    result: StoreTarget = request.getfixturevalue(f"{request.param}_target")
    return result
