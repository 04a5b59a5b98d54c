"""The bind rule and the API's settings, as pure functions (the process itself
is tests/e2e/api/test_process.py), and the compose file's `api` service."""

from __future__ import annotations

import pytest
import yaml

from engine.api.settings import ApiSettings, api_settings, bind_refusal, is_loopback
from engine.errors import ConfigError
from tests.support.tools import ROOT


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_binds_need_no_auth(host: str) -> None:
    assert is_loopback(host) and bind_refusal(ApiSettings(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "api.example.com"])
def test_other_binds_need_auth_or_the_insecure_flag(host: str) -> None:
    refusal = bind_refusal(ApiSettings(host=host))
    assert refusal and host in refusal and "--insecure-no-auth" in refusal
    assert bind_refusal(ApiSettings(host=host, jwt_secret="k")) is None
    assert bind_refusal(ApiSettings(host=host, jwks_url="http://idp/jwks.json")) is None
    assert bind_refusal(ApiSettings(host=host, insecure_no_auth=True)) is None


def test_settings_come_from_seed_names_and_ours() -> None:
    seed = api_settings({"JWT_SECRET": "a", "JWT_ALGORITHM": "HS512", "FOLDFLOW_API_PORT": "9000"})
    assert (seed.jwt_secret, seed.jwt_algorithm, seed.port) == ("a", "HS512", 9000)
    ours = api_settings({"JWT_SECRET": "a", "FOLDFLOW_JWT_SECRET": "b"}, host="0.0.0.0")
    assert ours.jwt_secret == "b" and ours.host == "0.0.0.0"


def test_bad_settings_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        api_settings({"FOLDFLOW_API_PORT": "70000", "JWT_ALGORITHM": "none"})
    assert "70000" in str(caught.value) and "'none'" in str(caught.value)
    with pytest.raises(ConfigError, match="FOLDFLOW_JWT_JWKS_URL"):
        api_settings({"JWT_SECRET": "a", "JWT_ALGORITHM": "RS256"})


def test_compose_serves_the_api_behind_a_secret() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["command"] == ["api", "--host", "0.0.0.0", "--port", "8080"]
    assert api["environment"]["FOLDFLOW_JWT_SECRET"].startswith("${FOLDFLOW_JWT_SECRET")
    assert "8080:8080" in api["ports"] and api["image"] == compose["services"]["engine"]["image"]
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["foldflow-api"]["dns_sd_configs"][0] == {"names": ["api"], "type": "A", "port": 8080}
