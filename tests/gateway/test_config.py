"""The routes file and the request-id rules."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from eventtrail.config import ConfigError
from eventtrail.gateway.config import ServerLimits, load_gateway_config, parse_gateway_config
from eventtrail.gateway.protocol import HttpProtocol
from eventtrail.gateway.proxy import build_app
from eventtrail.gateway.requestid import request_id_from, trace_id_of
from eventtrail.gateway.serve import server_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"


def test_the_example_config_loads() -> None:
    config = load_gateway_config(EXAMPLE)
    assert [(r.prefix, r.service, r.upstream, r.timeout) for r in config.routes] == [
        ("/a", "Microservice A", "http://127.0.0.1:9001", 5.0),
        ("/b", "Microservice B", "http://127.0.0.1:9002", 2.0),
    ]
    assert config.recording.redact_query == ["session"]
    assert config.recording.max_value_chars == 1024
    assert config.server == ServerLimits(
        max_header_bytes=32768, header_timeout=30.0, keep_alive_timeout=5.0, max_connections=1024
    )


def test_server_limits_reach_uvicorn() -> None:
    config = parse_gateway_config(
        {
            "routes": [{"prefix": "/a", "service": "A", "upstream": "http://x"}],
            "server": {"max_header_bytes": 4096, "header_timeout": 2.5, "max_connections": 7},
        }
    )
    uvicorn_config = server_config(build_app(config), "127.0.0.1", 0)
    protocol = uvicorn_config.http
    assert isinstance(protocol, type) and issubclass(protocol, HttpProtocol)
    assert protocol.limits == config.server
    assert uvicorn_config.limit_concurrency == 7
    # Any other app gets the defaults.
    assert server_config(object(), "127.0.0.1", 0).http.limits == ServerLimits()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "gateway config: object missing required field `routes`"),
        ({"routes": []}, "gateway config: at least one [[routes]] table is needed"),
        (
            {"routes": [{"prefix": "/a", "service": "A", "upstream": "ftp://x"}]},
            "gateway config at routes[0]: upstream 'ftp://x' must be an http:// or https:// URL",
        ),
        (
            {"routes": [{"prefix": "/a", "service": "A", "upstream": "http://x", "timeout": 0}]},
            "gateway config at routes[0].timeout: expected `float` > 0.0",
        ),
        (
            {"routes": [{"prefix": "/a", "service": "A", "upstream": "http://x", "retries": 3}]},
            "gateway config at routes[0]: object contains unknown field `retries`",
        ),
        (
            {
                "routes": [
                    {"prefix": "/a/", "service": "A", "upstream": "http://x"},
                    {"prefix": "/a", "service": "B", "upstream": "http://y"},
                ]
            },
            "gateway config: prefix '/a' is routed twice",
        ),
        (
            {"routes": [{"prefix": "/a/../b", "service": "A", "upstream": "http://x"}]},
            "gateway config at routes[0]: prefix '/a/../b' must be a plain path: no '.' or '..' segment,"
            " no '//', no '%', '\\', '?', '#' or control character",
        ),
        (
            {"routes": [{"prefix": "/a%2F", "service": "A", "upstream": "http://x"}]},
            "gateway config at routes[0]: prefix '/a%2F' must be a plain path: no '.' or '..' segment,"
            " no '//', no '%', '\\', '?', '#' or control character",
        ),
        (
            {"routes": [{"prefix": "/a", "service": "A", "upstream": "http://user:pw@x"}]},
            "gateway config at routes[0]: upstream 'http://user:pw@x' must not have a user or password",
        ),
        (
            {"routes": [{"prefix": "/a", "service": "A", "upstream": "http://x/a//b"}]},
            "gateway config at routes[0]: upstream 'http://x/a//b' must have a plain path:"
            " no '.' or '..' segment, no '//'",
        ),
        (
            {"routes": [{"prefix": "/a", "service": "A", "upstream": "http://x/?q=1"}]},
            "gateway config at routes[0]: upstream 'http://x/?q=1' must not have a query or fragment",
        ),
        (
            {
                "routes": [{"prefix": "/a", "service": "A", "upstream": "http://x"}],
                "server": {"max_header_bytes": 10},
            },
            "gateway config at server.max_header_bytes: expected `int` >= 1024",
        ),
        (
            {
                "routes": [{"prefix": "/a", "service": "A", "upstream": "http://x"}],
                "recording": {"max_value_chars": 10_000_000},
            },
            "gateway config at recording.max_value_chars: expected `int` <= 16384",
        ),
    ],
)
def test_a_bad_config_says_what_and_where(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_gateway_config(values)
    assert str(raised.value) == message


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[[routes]\n")
    with pytest.raises(ConfigError, match="cannot read gateway config"):
        load_gateway_config(broken)


def test_request_id_rules() -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert request_id_from("abc", trace) == "abc"
    assert request_id_from(None, trace) == "4bf92f3577b34da6a3ce929d0e0e4736"
    # Unusable ids fall through: spaces, too long, empty.
    assert request_id_from("has space", trace) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert request_id_from("x" * 201, trace) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert uuid.UUID(request_id_from("", None)).version == 7
    assert uuid.UUID(request_id_from(None, "garbage")).version == 7


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has no extra fields
    ],
)
def test_invalid_traceparents_are_ignored(traceparent: str) -> None:
    assert trace_id_of(traceparent) is None
