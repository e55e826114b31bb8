"""Redaction and bounds of what is recorded: no secret value reaches an
event however its name is spelt, and no value makes an event large."""

from __future__ import annotations

import socket
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventtrail.gateway.config import Recording
from eventtrail.gateway.redact import Redactor, is_secret_name, name_key
from tests.gateway.conftest import GatewayFactory, queued_events

SECRET = "~s3cr3t~"


def recorded_query(query_string: str, **recording: object) -> str | None:
    return Redactor(Recording(**recording)).query(query_string)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "client_secret",
        "refresh_token",
        "id_token",
        "access-token",
        "Access_Token",
        "passwd",
        "pwd",
        "jwt",
        "sig",
        "X-Amz-Credential",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "user[password]",
        "user%5Bpassword%5D",
        "USER%5bPASSWORD%5d",
        "user[pass]",
        "clientSecret",
        "apiKey",
        "APIKEY",
        "api-key",
        "api.key",
        "session_id",
        "PHPSESSID",
        "auth",
        "oauth_token",
        "code",
        "otp",
        "pin",
        "tok%65n",
        "x%2574oken",
        "pass+word",
        "hmacSig",
        "private_key",
        "signature",
    ],
)
def test_secret_like_names_are_redacted(name: str) -> None:
    recorded = recorded_query(f"page=2&{name}={SECRET}&sort=name")
    assert recorded == f"page=2&{name}=[redacted]&sort=name"


def test_semicolons_repeats_empty_values_and_plain_names() -> None:
    assert recorded_query(f"a=1;token={SECRET}") == "a=1;token=[redacted]"
    assert recorded_query(f"a=1&&token={SECRET};;b=2") == "a=1&&token=[redacted];;b=2"
    assert recorded_query(f"token={SECRET}&token={SECRET}2&x") == "token=[redacted]&token=[redacted]&x"
    assert recorded_query("token=&x=1") == "token=[redacted]&x=1"
    # Names that are not secrets are recorded exactly as the client encoded them.
    assert recorded_query("page=2&q=a%20b+c&sort=-name&filter[kind]=x") == (
        "page=2&q=a%20b+c&sort=-name&filter[kind]=x"
    )
    assert recorded_query("") is None
    assert recorded_query("a=1", query=False) is None


def test_the_allow_list_records_only_what_it_names() -> None:
    assert recorded_query(f"Page=2&q=private&token={SECRET}&author=me", record_query=["page", "author"]) == (
        "Page=2&q=[redacted]&token=[redacted]&author=me"
    )
    # redact_query wins over the allow-list.
    assert recorded_query("session=1&page=2", record_query=["session", "page"], redact_query=["session"]) == (
        "session=[redacted]&page=2"
    )
    assert recorded_query("x-state=1", redact_query=["X_State"]) == "x-state=[redacted]"


def test_huge_values_and_names_are_cut_and_still_redacted() -> None:
    huge = SECRET * 200_000
    recorded = recorded_query(f"token={huge}&page=2")
    assert recorded is not None
    assert SECRET not in recorded
    # Only the first max_value_chars are looked at (the work per request is
    # bounded too): what follows a huge value is not recorded.
    assert recorded == f"token=[redacted]…[truncated, {len(huge) + 13} chars in all]"
    long_plain = recorded_query("q=" + "x" * 5000)
    assert long_plain == "q=" + "x" * 1022 + "…[truncated, 5002 chars in all]"
    # A cut in the middle of a secret's value: the name is kept, so is the redaction.
    cut = recorded_query("a=" + "b" * 1000 + f"&password={huge}", max_value_chars=1010)
    assert cut is not None
    assert SECRET not in cut
    assert "~" not in cut
    # A name so long that the value is past the limit is recorded without it.
    assert SECRET not in (recorded_query("n" * 5000 + f"={SECRET}") or "")


def test_headers_with_secret_like_names_are_redacted_and_values_bounded() -> None:
    redactor = Redactor(
        Recording(
            request_headers=[
                *("x-custom-token", "x-session-id", "x-amz-credential", "x-signature", "x-api-key"),
                *("user-agent", "x-trace"),
            ],
            max_value_chars=100,
        )
    )
    picked = redactor.request_headers_of(
        [
            (b"x-custom-token", SECRET.encode()),
            (b"x-session-id", SECRET.encode()),
            (b"x-amz-credential", SECRET.encode()),
            (b"x-signature", SECRET.encode()),
            (b"x-api-key", SECRET.encode()),
            (b"user-agent", b"u" * 5000),
            (b"x-trace", b"t" * 60),
            (b"x-trace", b"t" * 60),
        ]
    )
    assert SECRET not in str(picked)
    assert picked["x-custom-token"] == "[redacted]"
    assert picked["user-agent"] == "u" * 100 + "…[truncated, 5000 chars in all]"
    assert len(picked["x-trace"]) < 160


def test_names_compare_after_normalising() -> None:
    assert name_key("User[Password]") == name_key("user-password") == name_key("user%5Bpassword%5D")
    assert name_key("clientSecret") == "client_secret"
    for harmless in ("page", "sort", "q", "limit", "design", "encoding", "monk"):
        assert not is_secret_name(harmless), harmless


# -- any decoration of a secret word ----------------------------------------

_ANYWHERE = ["token", "secret", "password", "passwd", "pwd", "credential", "jwt", "signature", "session"]
_ANYWHERE += ["cookie", "auth", "apikey"]
_WHOLE_WORD = ["key", "sig", "code", "pass", "pin", "otp", "sid"]
_SEPARATORS = st.sampled_from(["_", "-", ".", "[", "]", "][", " ", "+", "%5B", "%5D", "%2D", "%5F"])
_AFFIX = st.text(string.ascii_lowercase, max_size=6)


@st.composite
def secret_names(draw: st.DrawFn) -> str:
    """A secret word, decorated: other words around it (joined by separators,
    or in camelCase for the short words), any case, percent-encoded."""
    camel = False
    if draw(st.booleans()):
        name = draw(_AFFIX) + draw(st.sampled_from(_ANYWHERE)) + draw(_AFFIX)
    else:
        word = draw(st.sampled_from(_WHOLE_WORD))
        before = draw(_AFFIX)
        camel = bool(before) and draw(st.booleans())
        joint = "" if camel or not before else draw(_SEPARATORS)
        name = before + joint + (word.capitalize() if camel else word)
        if draw(st.booleans()):
            name += draw(_SEPARATORS) + draw(_AFFIX)
    # A case change would erase a camelCase boundary, the one word break there.
    if not camel:
        name = draw(st.sampled_from([name, name.upper(), name.title(), name.swapcase()]))
    for _ in range(draw(st.integers(0, 2))):
        encode = draw(st.sets(st.integers(0, max(len(name) - 1, 0)), max_size=3))
        name = "".join(f"%{ord(char):02X}" if i in encode else char for i, char in enumerate(name))
    return name


@settings(max_examples=600, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.one_of(secret_names(), st.sampled_from(["page", "sort", "q"])), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    separators=st.lists(st.sampled_from(["&", ";", "&&", ";&"]), min_size=6, max_size=6),
    empty=st.booleans(),
)
def test_no_decorated_secret_name_leaks_its_value(
    pairs: list[tuple[str, bool]], separators: list[str], empty: bool
) -> None:
    pieces = []
    for index, (name, _) in enumerate(pairs):
        value = "" if empty and index == 0 else SECRET if name not in ("page", "sort", "q") else "v"
        pieces.append(f"{name}={value}" + separators[index])
    query = "".join(pieces)
    recorded = recorded_query(query)
    assert recorded is not None
    assert "~" not in recorded, query


# -- over the wire ------------------------------------------------------------


def test_a_hostile_query_and_huge_values_are_recorded_redacted_and_bounded(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gateway = make_gateway(recording={"request_headers": ["user-agent", "x-refresh-token"]})
    query = (
        f"client_secret={SECRET}&user%5Bpassword%5D={SECRET};jwt={SECRET}&X-Amz-Credential={SECRET}"
        f"&page=2&big={'b' * 8000}"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            f"GET /echo/{'p' * 5000}?{query} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            f"User-Agent: {'u' * 8000}\r\nX-Refresh-Token: {SECRET}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    gateway.stop()
    request, _ = queued_events(tmp_path / "queue.db")
    assert request.data["query"].startswith(
        "client_secret=[redacted]&user%5Bpassword%5D=[redacted];jwt=[redacted]"
        "&X-Amz-Credential=[redacted]&page=2&big=bbb"
    )
    assert len(request.data["query"]) < 1100
    assert len(request.data["path"]) < 1100
    assert request.data["path"].endswith("…[truncated, 5001 chars in all]")
    assert request.data["requestHeaders"]["x-refresh-token"] == "[redacted]"
    assert len(request.data["requestHeaders"]["user-agent"]) < 1100
    with (tmp_path / "queue.db").open("rb") as file:
        assert SECRET.encode() not in file.read()
