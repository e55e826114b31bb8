"""Operation names: ids in paths never leak into them (hypothesis)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from eventtrail.readmodels.model import UNKNOWN_OPERATION, operation_name, path_template

words = st.sampled_from(
    ["orders", "items", "users", "v1", "v2", "api", "by-name", "search", "oauth2", "health"]
)
numbers = st.integers(min_value=0, max_value=10**30).map(str)
uuids = (
    st.uuids().map(str) | st.uuids().map(lambda value: value.hex) | st.uuids().map(lambda v: str(v).upper())
)
hexes = st.text("0123456789abcdef", min_size=16, max_size=64).filter(
    lambda text: any(c.isdigit() for c in text)
)
tokens = st.text("ABCDEFGHJKMNPQRSTVWXYZ0123456789", min_size=26, max_size=26).filter(
    lambda text: any(c.isdigit() for c in text)
)  # ULIDs
ids = numbers | uuids | hexes | tokens
segments = st.lists(st.tuples(st.booleans(), words, ids), min_size=1, max_size=8)


@given(segments, st.sampled_from(["GET", "post", "DELETE"]), st.text(max_size=20))
def test_ids_never_leak_into_operation_names(
    parts: list[tuple[bool, str, str]], method: str, query: str
) -> None:
    path = "/" + "/".join(word if is_word else identifier for is_word, word, identifier in parts)
    name = operation_name(method, f"{path}?{query}")
    verb, template = name.split(" ", 1)
    assert verb == method.upper()
    for is_word, _, identifier in parts:
        if not is_word:
            assert identifier not in template.split("/")
    expected = "/" + "/".join(word if is_word else "{id}" for is_word, word, _ in parts)
    assert template == expected


@given(segments, segments)
def test_paths_differing_only_in_ids_are_one_operation(
    first: list[tuple[bool, str, str]], second: list[tuple[bool, str, str]]
) -> None:
    shape = [is_word for is_word, _, _ in first]
    words_ = [word for _, word, _ in first]
    others = [identifier for _, _, identifier in second] + [str(uuid.uuid4())] * len(first)
    a = "/".join(w if keep else i for keep, w, (_, _, i) in zip(shape, words_, first, strict=True))
    b = "/".join(w if keep else others[n] for n, (keep, w) in enumerate(zip(shape, words_, strict=True)))
    assert operation_name("GET", "/" + a) == operation_name("GET", "/" + b)


@given(st.text(max_size=3000), st.text(max_size=40))
def test_any_path_and_method_make_a_bounded_name(path: str, method: str) -> None:
    name = operation_name(method, path)
    assert len(name) <= 16 + 1 + 1 + 13 * 41
    assert name == UNKNOWN_OPERATION or name.split(" ", 1)[1].startswith("/")


def test_examples() -> None:
    assert operation_name("GET", "/orders/42") == "GET /orders/{id}"
    assert operation_name("get", "/orders/43/items?page=2") == "GET /orders/{id}/items"
    assert operation_name("GET", "/api/v2/users/jane@example.com") == "GET /api/v2/users/{id}"
    assert operation_name("GET", "") == "GET /"
    assert operation_name(None, "/x") == UNKNOWN_OPERATION
    assert operation_name("GET", 42) == UNKNOWN_OPERATION
    assert operation_name("G E T", "/x") == "OTHER /x"
    assert path_template("/" + "/".join(["a"] * 20)).endswith("/...")
