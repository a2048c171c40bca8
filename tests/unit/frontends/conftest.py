"""Fixtures for the frontends: a bootstrapped in-process stack, its admin app and test client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack


@pytest.fixture
def services() -> Iterator[Services]:
    stack = in_memory_stack(ServerConfig(l2_adapters=('{"type": "mock"}',)))
    yield stack
    stack.close()


@pytest.fixture
def app(services: Services) -> Flask:
    return create_app(services)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
