"""The design contracts in docs/design are the steering copies, word for word."""

from __future__ import annotations

import pytest

from tests.ops._contract import CONTRACT_PATH, SHARED_CONTRACT_DIR

pytestmark = pytest.mark.ops


@pytest.mark.parametrize("name", ["telemetry.md", "reliability.md", "style.md"])
def test_contract_copy_is_current(name):
    shared = SHARED_CONTRACT_DIR / name
    if not shared.exists():
        pytest.skip("no steering copy beside this checkout (../shared/design); the repo copy is used as is")
    assert (CONTRACT_PATH.parent / name).read_text() == shared.read_text(), (
        f"docs/design/{name} differs from ../shared/design/{name}: copy the new contract in"
    )
