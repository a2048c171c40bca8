"""Diagnostics routes: /env redaction and /run_script (off by default, the seed's shape when on)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from lmcache_frontends.admin.app import create_app
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack


def make_client(**config: object) -> Iterator[FlaskClient]:
    stack = in_memory_stack(ServerConfig(**config))  # type: ignore[arg-type]
    yield create_app(stack).test_client()
    stack.close()


@pytest.fixture
def enabled() -> Iterator[FlaskClient]:
    yield from make_client(enable_run_script=True)


def test_env_is_sorted_json_text_with_secret_values_redacted(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("LMCACHE_ADMIN_TOKEN", "t0ken")
    monkeypatch.setenv("db_password", "pw")
    monkeypatch.setenv("GCP_CREDENTIALS_FILE", "/etc/creds.json")
    monkeypatch.setenv("PLAIN_SETTING", "visible")
    response = client.get("/env")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    doc = json.loads(text)
    assert list(doc) == sorted(doc)
    assert doc["PLAIN_SETTING"] == "visible"
    for name in ("AWS_SECRET_ACCESS_KEY", "LMCACHE_ADMIN_TOKEN", "db_password", "GCP_CREDENTIALS_FILE"):
        assert doc[name] == "***"
    assert "hunter2" not in text and "t0ken" not in text


def test_env_unredacted_shows_the_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    for client in make_client(env_unredacted=True):
        assert json.loads(client.get("/env").get_data())["AWS_SECRET_ACCESS_KEY"] == "hunter2"


def test_run_script_is_off_by_default_and_names_the_flag(client: FlaskClient) -> None:
    response = client.post("/run_script", data={"script": (io.BytesIO(b"result = 1"), "s.py")})
    assert response.status_code == 403
    assert "--enable-run-script" in response.get_json()["error"]


def test_run_script_returns_result_or_the_default_text(enabled: FlaskClient) -> None:
    ok = enabled.post("/run_script", data={"script": (io.BytesIO(b"result = [str(app.name), 2 * 21]"), "s.py")})
    assert ok.status_code == 200 and ok.mimetype == "text/plain"
    assert ok.get_data(as_text=True) == "['lmcache_frontends.admin', 42]"
    plain = enabled.post("/run_script", data={"script": (io.BytesIO(b"x = 1"), "s.py")})
    assert plain.get_data(as_text=True) == "Script executed successfully"


def test_run_script_errors(enabled: FlaskClient) -> None:
    missing = enabled.post("/run_script", data={})
    assert missing.status_code == 400 and "script" in missing.get_json()["error"]
    failing = enabled.post("/run_script", data={"script": (io.BytesIO(b"1 / 0"), "s.py")})
    assert failing.status_code == 500
    assert failing.get_data(as_text=True) == "Error executing script: division by zero"
    imports = enabled.post("/run_script", data={"script": (io.BytesIO(b"import os"), "s.py")})
    assert imports.status_code == 500 and "not allowed" in imports.get_data(as_text=True)
    no_open = enabled.post("/run_script", data={"script": (io.BytesIO(b"open('/etc/passwd')"), "s.py")})
    assert no_open.status_code == 500 and "open" in no_open.get_data(as_text=True)
