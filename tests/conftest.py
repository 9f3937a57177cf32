"""Shared fixtures: a real MongoDB wire-protocol server for the whole run."""
import os
import uuid

import pytest

from sandbox.mongo import MongoServer


@pytest.fixture(scope="session")
def mongodb_server_uri(tmp_path_factory):
    """MONGODB_URI when set, else a SecantusDB server started for this test run."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    server = MongoServer(tmp_path_factory.mktemp("mongodb")).start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def db_name():
    """A database name of this test's own, so tests never see each other's data."""
    return "t_" + uuid.uuid4().hex[:12]
