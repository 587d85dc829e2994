"""PasteRecord: strict JSON round trip, content hash, validation messages."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomseg.errors import InputError
from anomseg.synth.records import PasteRecord, records_hash

ids = st.text(min_size=1, max_size=40)
finite = dict(allow_nan=False, allow_infinity=False)
records = st.builds(
    PasteRecord,
    background_id=ids,
    source=ids,
    object_id=ids,
    x=st.integers(-1_000_000, 1_000_000),
    y=st.integers(-1_000_000, 1_000_000),
    scale=st.floats(min_value=1e-6, max_value=64.0, **finite),
    flip=st.booleans(),
    rotation=st.floats(min_value=-180.0, max_value=180.0, **finite),
    feather=st.floats(min_value=0.0, max_value=64.0, **finite),
    photometric=st.booleans(),
    order=st.integers(0, 2**31 - 1),
)

BASE = PasteRecord("bg", "coco", "17", x=10, y=20, scale=1.5, flip=True, rotation=5.0)


@settings(max_examples=150, deadline=None)
@given(records)
def test_json_round_trip(rec: PasteRecord) -> None:
    text = rec.to_json()
    back = PasteRecord.from_json(text)
    assert back == rec
    assert back.content_hash() == rec.content_hash()
    assert PasteRecord.from_json(json.loads(text)) == rec


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=12),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60)))
def test_garbage_text_raises_input_error_only(text) -> None:
    try:
        PasteRecord.from_json(text)
    except InputError:
        pass


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_garbage_json_structures_raise_input_error_only(value) -> None:
    try:
        PasteRecord.from_json(json.dumps(value))
    except InputError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([f for f in BASE.to_dict()]),
    json_values,
)
def test_one_field_garbage_raises_input_error_only(field: str, value) -> None:
    data = BASE.to_dict() | {field: value}
    try:
        rec = PasteRecord.from_json(json.dumps(data))
    except InputError:
        return
    assert getattr(rec, field) == value  # accepted only if it is a valid value for the field


def test_hash_is_sha256_of_canonical_json_and_changes_with_each_field() -> None:
    canonical = json.dumps(BASE.to_dict(), sort_keys=True, separators=(",", ":"))
    assert BASE.content_hash() == hashlib.sha256(canonical.encode()).hexdigest()
    changes = {
        "background_id": "bg2", "source": "bank", "object_id": "18", "x": 11, "y": 21,
        "scale": 1.5000001, "flip": False, "rotation": -5.0, "feather": 3.0,
        "photometric": True, "order": 1,
    }  # fmt: skip
    assert set(changes) == set(BASE.to_dict())
    seen = {BASE.content_hash()}
    for field, value in changes.items():
        h = BASE.replace(**{field: value}).content_hash()
        assert h not in seen, field
        seen.add(h)
    # integral numbers and -0.0 normalise: equal records hash equally
    assert BASE.replace(scale=2).content_hash() == BASE.replace(scale=2.0).content_hash()
    assert BASE.replace(rotation=-0.0).content_hash() == BASE.replace(rotation=0.0).content_hash()


def test_records_hash_is_order_sensitive() -> None:
    a, b = BASE, BASE.replace(order=1)
    assert records_hash([a, b]) != records_hash([b, a])
    assert records_hash([a, b]) == records_hash((a, b))


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("scale", 0.0, "(0.0, 64.0]"),
        ("scale", 65.0, "(0.0, 64.0]"),
        ("scale", "1.0", "(0.0, 64.0]"),
        ("rotation", 181.0, "[-180.0, 180.0]"),
        ("feather", -1.0, "[0.0, 64.0]"),
        ("x", 1.5, "[-1000000, 1000000]"),
        ("x", True, "[-1000000, 1000000]"),
        ("order", -1, "[0, 2147483647]"),
        ("flip", 1, "true or false"),
        ("photometric", "yes", "true or false"),
        ("object_id", "", "non-empty string"),
        ("source", 3, "non-empty string"),
    ],
)
def test_bad_values_name_field_and_range(field: str, value, needle: str) -> None:
    data = BASE.to_dict() | {field: value}
    with pytest.raises(InputError) as exc:
        PasteRecord.from_json(json.dumps(data))
    assert repr(field) in str(exc.value) and needle in str(exc.value)


def test_unknown_missing_and_nonfinite() -> None:
    with pytest.raises(InputError, match="unknown field.*'colour'"):
        PasteRecord.from_json(BASE.to_dict() | {"colour": 1})
    data = BASE.to_dict()
    del data["x"]
    with pytest.raises(InputError, match="missing field.*'x'"):
        PasteRecord.from_json(data)
    with pytest.raises(InputError, match="invalid JSON"):
        PasteRecord.from_json(BASE.to_json().replace('"scale":1.5', '"scale":NaN'))
    with pytest.raises(InputError, match="JSON object"):
        PasteRecord.from_json("[1, 2]")
    with pytest.raises(InputError, match="unknown field"):
        BASE.replace(colour=1)
    # optional fields take their defaults
    minimal = {"background_id": "b", "source": "s", "object_id": "o", "x": 0, "y": 0}
    rec = PasteRecord.from_json(minimal)
    assert (rec.scale, rec.flip, rec.rotation, rec.order) == (1.0, False, 0.0, 0)


def test_huge_numbers_and_direct_construction() -> None:
    for field in ("scale", "rotation", "feather", "x", "order"):
        with pytest.raises(InputError, match=repr(field)):
            PasteRecord.from_dict(BASE.to_dict() | {field: 10**400})
    with pytest.raises(InputError, match="'scale'"):
        PasteRecord("bg", "coco", "1", x=0, y=0, scale=-1.0)  # invalid records cannot exist
