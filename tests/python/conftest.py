"""The service run.sh started, as fixtures."""
import os

import pytest


@pytest.fixture(scope="session")
def service():
    keys = ("XLM_ENDPOINT", "XLM_BACKEND", "XLM_RUN_DIR", "XLM_BUILD_DIR", "XLM_SOURCE_DIR")
    missing = [k for k in keys if k not in os.environ]
    if missing:
        pytest.skip(f"run through tests/python/run.sh (no {', '.join(missing)})")
    return {k[4:].lower(): os.environ[k] for k in keys}


@pytest.fixture
def client(service):
    import xlmserve
    with xlmserve.Client(service["endpoint"], attempt_timeout_ms=3000, max_attempts=20) as c:
        yield c
