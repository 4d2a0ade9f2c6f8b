"""Shared fixtures: one real redis-server per session, flushed before each test that uses it."""

from __future__ import annotations

import pytest

from support import RedisServer, ServiceProcess


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_url(redis_server, r) -> str:
    """URL of a freshly flushed redis-server."""
    return redis_server.url


@pytest.fixture
def service_factory(redis_url):
    """Start services against the test's Redis; every one still running is stopped at the end."""
    started: list[ServiceProcess] = []

    def make(start: bool = True, url: str | None = None, **env) -> ServiceProcess:
        svc = ServiceProcess(url or redis_url, **env)
        started.append(svc)
        return svc.start() if start else svc

    yield make
    for svc in started:
        if svc.proc is not None:
            svc.stop(timeout=30)
