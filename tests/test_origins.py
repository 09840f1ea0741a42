"""The Origin policy, one rule per test.

Pure logic: every policy is built with an explicit ``environ`` dict (never
the real ``os.environ``) and, where an app is implied, a plain ``config``
dict shaped like ``app.config``.
"""

from __future__ import annotations

import pytest

from asok_green.core.origins import InsecureOriginPolicy, OriginPolicy

pytestmark = pytest.mark.quick

PROD = {"DEBUG": False}
DEBUG = {"DEBUG": True}


def policy(allowed=None, config=None, environ=None, **kwargs) -> OriginPolicy:
    """Build a policy that never looks at the real environment."""
    return OriginPolicy.from_settings(allowed, config=config, environ=environ or {}, **kwargs)


# --- where the list comes from ---


def test_constructor_list_is_allowed():
    p = policy(["https://myapp.com", "https://admin.myapp.com"])
    assert p.allows("https://myapp.com")
    assert p.allows("https://admin.myapp.com")
    assert not p.allows("https://other.com")


def test_constructor_comma_string_is_split_and_trimmed():
    p = policy(" https://a.com , https://b.com/ ")
    assert p.allows("https://a.com")
    assert p.allows("https://b.com")
    assert not p.allows("https://c.com")


def test_entries_and_origins_compare_lower_case_without_trailing_slash():
    p = policy(["HTTPS://MyApp.com/"])
    assert p.allows("https://myapp.com")
    assert p.allows("https://MYAPP.COM/")


def test_env_var_ws_allowed_origins():
    p = policy(environ={"WS_ALLOWED_ORIGINS": "https://a.com,https://b.com"})
    assert p.allows("https://a.com")
    assert p.allows("https://b.com")
    assert not p.allows("https://c.com")


def test_config_cors_origins_list():
    p = policy(config={**PROD, "CORS_ORIGINS": ["https://cors.com"]})
    assert p.allows("https://cors.com")
    assert not p.allows("https://other.com")


def test_config_cors_origins_comma_string():
    p = policy(config={**PROD, "CORS_ORIGINS": "https://a.com, https://b.com"})
    assert p.allows("https://a.com")
    assert p.allows("https://b.com")


def test_constructor_wins_over_env_and_config():
    p = policy(
        ["https://ctor.com"],
        config={**PROD, "CORS_ORIGINS": ["https://cors.com"]},
        environ={"WS_ALLOWED_ORIGINS": "https://env.com"},
    )
    assert p.allows("https://ctor.com")
    assert not p.allows("https://env.com")
    assert not p.allows("https://cors.com")


def test_env_wins_over_config():
    p = policy(
        config={**PROD, "CORS_ORIGINS": ["https://cors.com"]},
        environ={"WS_ALLOWED_ORIGINS": "https://env.com"},
    )
    assert p.allows("https://env.com")
    assert not p.allows("https://cors.com")


def test_empty_constructor_value_falls_through_to_env():
    p = policy([], environ={"WS_ALLOWED_ORIGINS": "https://env.com"})
    assert p.allows("https://env.com")


# --- wildcards ---


def test_wildcard_subdomain_matches():
    p = policy(["https://*.mydomain.com"])
    assert p.allows("https://app.mydomain.com")
    assert p.allows("https://a.b-c.mydomain.com")


def test_wildcard_needs_at_least_one_character():
    p = policy(["https://*.mydomain.com"])
    assert not p.allows("https://.mydomain.com")
    assert not p.allows("https://mydomain.com")


@pytest.mark.parametrize(
    "origin",
    [
        "https://mydomain.com.evil.com",
        "https://evil.com/?x=.mydomain.com",
        "https://evil.com#.mydomain.com",
        "https://user@evil.com/.mydomain.com",
        "https://evil.com:443.mydomain.com",
        "https://evil_com.mydomain.com",
        "https://app.mydomain.com.",
    ],
)
def test_wildcard_refuses_lookalikes(origin):
    assert not policy(["https://*.mydomain.com"]).allows(origin)


def test_wildcard_refuses_other_scheme():
    p = policy(["https://*.mydomain.com"])
    assert not p.allows("http://app.mydomain.com")
    assert not p.allows("wss://app.mydomain.com")


def test_wildcard_port_matches_digits_only():
    p = policy(["http://dev.example.com:*"])
    assert p.allows("http://dev.example.com:4321")
    assert not p.allows("http://dev.example.com:4321.evil.com")
    assert not p.allows("http://dev.example.com:")


def test_wildcard_star_matches_at_most_200_characters():
    p = policy(["https://*.mydomain.com"])
    assert p.allows("https://" + "a" * 200 + ".mydomain.com")
    assert not p.allows("https://" + "a" * 201 + ".mydomain.com")


def test_each_star_is_limited_to_200_characters():
    p = policy(["https://*.*.mydomain.com"])
    assert p.allows("https://" + "a" * 200 + ".b.mydomain.com")
    assert not p.allows("https://" + "a" * 201 + ".b.mydomain.com")


def test_wildcard_pattern_over_200_characters_is_ignored():
    long_pattern = "https://*." + "a" * 200 + ".com"
    p = policy([long_pattern])
    assert not p.allows("https://x." + "a" * 200 + ".com")
    assert p.ignored == (long_pattern,)


def test_over_long_pattern_is_ignored_even_when_constructed_directly():
    long_pattern = "https://*." + "a" * 200 + ".com"
    p = OriginPolicy(wildcards=(long_pattern,))
    assert not p.allows("https://x." + "a" * 200 + ".com")


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "hostile",
    [
        "https://" + "a." * 5000 + "mydomain.co",
        "https://" + "a" * 9990 + ".mydomain.com",
        "https://" + ".mydomain.com" * 769,
        "https://" + "-" * 10_000,
    ],
)
def test_hostile_10k_origin_against_wildcards_is_refused_quickly(hostile):
    p = policy(["https://*.mydomain.com", "https://*.*.*.*.*.mydomain.com"])
    assert len(hostile) >= 9_990
    # Many calls under the timeout: a backtracking matcher would not finish.
    assert not any(p.allows(hostile) for _ in range(200))


def test_multi_star_pattern_matches_without_backtracking():
    p = policy(["https://*.*.mydomain.com"])
    assert p.allows("https://a.b.mydomain.com")
    assert p.allows("https://a.b.c.mydomain.com")
    assert not p.allows("https://a.mydomain.com")


# --- defaults that need no configuration ---


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "https://localhost",
        "http://127.0.0.1",
        "http://[::1]",
        "http://localhost:8000",
        "http://localhost:3000",
        "http://127.0.0.1:5173",
        "https://127.0.0.1:5000",
        "http://localhost:8080",
        "http://[::1]:8001",
    ],
)
def test_local_dev_origins_are_allowed_by_default(origin):
    assert policy(["https://myapp.com"]).allows(origin)
    assert policy().allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:9999",
        "http://localhost:8000x",
        "http://localhost.evil.com",
        "http://127.0.0.1.evil.com:8000",
        "ftp://localhost:8000",
        "http://localhost:8000/path",
    ],
)
def test_other_local_looking_origins_are_refused(origin):
    assert not policy().allows(origin)


def test_local_ports_adds_the_ws_and_app_ports():
    p = policy(local_ports=[9001], environ={"ASOK_PORT": "9002"})
    assert p.allows("http://localhost:9001")
    assert p.allows("http://127.0.0.1:9002")
    assert not p.allows("http://localhost:9003")


def test_config_ws_port_is_a_local_port():
    assert policy(config={**PROD, "WS_PORT": 9100}).allows("http://localhost:9100")


# --- the page's own origin (one-port serving) ---


def test_own_origin_matches_host_header():
    p = policy()
    assert p.allows("https://shop.example.com", host="shop.example.com")
    assert p.allows("http://shop.example.com:8443", host="SHOP.example.com:8443")


def test_own_origin_normalises_default_ports():
    p = policy()
    assert p.allows("http://a.com", host="a.com:80")
    assert p.allows("https://a.com", host="a.com:443")
    assert p.allows("http://a.com:80", host="a.com")


def test_own_origin_needs_same_port_and_host():
    p = policy()
    assert not p.allows("http://a.com", host="a.com:443")
    assert not p.allows("https://a.com", host="a.com:80")
    assert not p.allows("http://a.com:8081", host="a.com:8080")
    assert not p.allows("https://evil.com", host="a.com")
    assert not p.allows("https://a.com.evil.com", host="a.com")


def test_own_origin_refused_without_host_or_with_bad_host():
    p = policy()
    assert not p.allows("https://a.com")
    assert not p.allows("https://a.com", host="")
    assert not p.allows("https://a.com", host="a.com:notaport")


# --- missing, null and '*' origins ---


def test_missing_origin_refused_by_default():
    p = policy()
    assert not p.allows(None)
    assert not p.allows("")


@pytest.mark.parametrize("value", ["1", "true", "TRUE"])
def test_missing_origin_allowed_by_env(value):
    assert policy(environ={"WS_ALLOW_NO_ORIGIN": value}).allows(None)


def test_missing_origin_not_allowed_by_other_env_values():
    assert not policy(environ={"WS_ALLOW_NO_ORIGIN": "yes-please"}).allows(None)


def test_missing_origin_allowed_by_config():
    p = policy(config={**PROD, "ALLOW_WEBSOCKET_NO_ORIGIN": True})
    assert p.allows(None)


def test_null_origin_refused():
    p = policy(["https://myapp.com"])
    assert not p.allows("null")
    assert not p.allows("null", host="null")


def test_null_origin_allowed_only_when_listed_literally():
    assert policy(["null"]).allows("null")


@pytest.mark.parametrize(
    ("config", "environ"),
    [
        (PROD, {}),
        (None, {"DEBUG": "false"}),
        (None, {"ASOK_ENV": "production"}),
    ],
)
def test_star_in_production_raises(config, environ):
    with pytest.raises(InsecureOriginPolicy, match="List your domains"):
        policy("*", config=config, environ=environ)


def test_star_from_env_or_config_in_production_raises_too():
    with pytest.raises(InsecureOriginPolicy):
        policy(environ={"WS_ALLOWED_ORIGINS": "*"}, config=PROD)
    with pytest.raises(InsecureOriginPolicy):
        policy(config={**PROD, "CORS_ORIGINS": "*"})


def test_insecure_origin_policy_is_a_value_error():
    assert issubclass(InsecureOriginPolicy, ValueError)


def test_star_in_debug_allows_localhost_on_any_port_only():
    p = policy("*", config=DEBUG)
    assert p.allows("http://localhost:4444")
    assert p.allows("https://127.0.0.1:1")
    assert p.allows("ws://localhost:9999")
    assert p.allows("http://[::1]:7777")
    assert not p.allows("https://evil.com")
    assert not p.allows("http://localhost.evil.com")
    assert not p.allows("http://localhost:evil")
    assert not p.allows("ftp://localhost:21")


def test_star_in_debug_also_lets_clients_without_origin_in():
    assert policy("*", config=DEBUG).allows(None)


def test_debug_from_environ_when_no_config():
    assert policy("*", environ={}).allows("http://localhost:4444")


# --- the startup line ---


def test_describe_names_the_allowed_origins():
    text = policy(["https://myapp.com", "https://*.mydomain.com"]).describe()
    assert "https://myapp.com" in text
    assert "https://*.mydomain.com" in text
    assert "localhost" in text
    assert "\n" not in text


def test_describe_says_when_star_is_active():
    assert "any port" in policy("*", config=DEBUG).describe()
