"""The data converter (duro.converter): JSON round trips, typed decoding, refusals and failure payloads."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
from dataclasses import dataclass
from typing import Any, Optional

import msgspec
import orjson
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

import duro
from duro.converter import (
    JsonConverter,
    convert,
    decode_failure,
    default_converter,
    encode_failure,
    failure_from_dict,
    failure_to_dict,
    parameter_hints,
)
from duro.errors import ActivityError, ApplicationError, CancelledError, TerminatedError, TimeoutError

conv = JsonConverter()


# ------------------------------------------------------------------ types used as annotations


@dataclass
class Item:
    sku: str
    qty: int
    price: float = 0.0


class Money(pydantic.BaseModel):
    amount: int
    currency: str = "EUR"


class Tag(msgspec.Struct):
    key: str
    value: str


class Address(pydantic.BaseModel):
    street: str
    city: str


class Customer(pydantic.BaseModel):
    name: str
    address: Address
    tags: list[str] = []


class Line(msgspec.Struct):
    item: str
    money: int


class Invoice(msgspec.Struct):
    number: int
    lines: list[Line]
    note: str | None = None


@dataclass
class Cart:
    items: list[Item]
    total: Optional[Money]  # noqa: UP045 - typing.Optional on purpose (Money | None below)
    tags: dict[str, Tag]
    invoice: Invoice | None = None
    history: list[list[Item]] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------ plain JSON values

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_json_values_round_trip(value: Any) -> None:
    data = conv.encode(value)
    assert isinstance(data, bytes)
    assert conv.decode(data) == value
    assert conv.decode(data, Any) == value


@given(st.lists(json_values, max_size=6))
def test_argument_lists_round_trip(args: list[Any]) -> None:
    data = conv.encode_args(args)
    assert conv.decode_args(data, []) == args
    assert conv.decode_args(data, [None] * len(args)) == args


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.25, 1e300, "", "héllo ✓ 🎉", "\x00",
    [], {}, [1, [2, [3, {"a": None}]]], {"nested": {"list": [1.0, "x", False]}},
])
def test_json_examples_round_trip(value: Any) -> None:
    assert conv.decode(conv.encode(value)) == value
    assert default_converter.decode(default_converter.encode(value)) == value


def test_scalar_hints() -> None:
    assert conv.decode(conv.encode(3), float) == 3.0 and isinstance(conv.decode(b"3", float), float)
    assert conv.decode(b"3", int) == 3 and conv.decode(b'"x"', str) == "x"
    assert conv.decode(b"[1,2]", tuple) == (1, 2)
    assert conv.decode(b"[1,2]", tuple[int, ...]) == (1, 2)
    assert conv.decode(b'[1,"a"]', tuple[int, str]) == (1, "a")
    assert conv.decode(b"null", Item) is None
    assert conv.decode(b"null", Item | None) is None


# ------------------------------------------------------------------ dataclasses, Structs, models


def test_dataclass_round_trip() -> None:
    item = Item("A-1", 2, 9.5)
    data = conv.encode(item)
    assert orjson.loads(data) == {"sku": "A-1", "qty": 2, "price": 9.5}
    back = conv.decode(data, Item)
    assert isinstance(back, Item) and back == item
    assert conv.decode(data) == {"sku": "A-1", "qty": 2, "price": 9.5}  # no hint: plain data


def test_dataclass_float_field_from_an_int() -> None:
    back = conv.decode(b'{"sku":"s","qty":1,"price":3}', Item)
    assert back == Item("s", 1, 3.0) and isinstance(back.price, float)


def test_msgspec_struct_round_trip() -> None:
    inv = Invoice(7, [Line("a", 1), Line("b", 2)], note="n")
    back = conv.decode(conv.encode(inv), Invoice)
    assert isinstance(back, Invoice) and back == inv
    assert all(isinstance(line, Line) for line in back.lines)


def test_pydantic_model_round_trip() -> None:
    c = Customer(name="Ada", address=Address(street="1 Loop", city="Lyon"), tags=["vip"])
    back = conv.decode(conv.encode(c), Customer)
    assert isinstance(back, Customer) and back == c
    assert isinstance(back.address, Address)


def test_nested_containers_of_each_kind() -> None:
    items = [Item("a", 1), Item("b", 2, 0.5)]
    back = conv.decode(conv.encode(items), list[Item])
    assert back == items and all(isinstance(i, Item) for i in back)

    money = Money(amount=5)
    for hint in (Optional[Money], Money | None):  # noqa: UP045 - both spellings
        back_money = conv.decode(conv.encode(money), hint)
        assert back_money == money and isinstance(back_money, Money)
        assert conv.decode(conv.encode(None), hint) is None

    tags = {"env": Tag("env", "prod"), "team": Tag("team", "core")}
    back_tags = conv.decode(conv.encode(tags), dict[str, Tag])
    assert back_tags == tags and all(isinstance(t, Tag) for t in back_tags.values())

    pairs = conv.decode(conv.encode((Item("x", 1), Money(amount=2))), tuple[Item, Money])
    assert pairs == (Item("x", 1), Money(amount=2))
    assert isinstance(pairs[0], Item) and isinstance(pairs[1], Money)

    many = conv.decode(conv.encode([[Item("a", 1)], []]), list[list[Item]])
    assert many == [[Item("a", 1)], []] and isinstance(many[0][0], Item)

    maybe_items = conv.decode(conv.encode({"k": [Item("a", 1)], "n": None}), dict[str, list[Item] | None])
    assert maybe_items == {"k": [Item("a", 1)], "n": None} and isinstance(maybe_items["k"][0], Item)


def test_dataclass_with_nested_fields_of_every_kind() -> None:
    cart = Cart(
        items=[Item("a", 1, 2.5), Item("b", 3)],
        total=Money(amount=10, currency="USD"),
        tags={"promo": Tag("promo", "spring")},
        invoice=Invoice(1, [Line("a", 2)]),
        history=[[Item("old", 1)]],
    )
    back = conv.decode(conv.encode(cart), Cart)
    assert back == cart
    assert isinstance(back, Cart)
    assert all(isinstance(i, Item) for i in back.items)
    assert isinstance(back.total, Money)
    assert isinstance(back.tags["promo"], Tag)
    assert isinstance(back.invoice, Invoice) and isinstance(back.invoice.lines[0], Line)
    assert isinstance(back.history[0][0], Item)

    empty = Cart(items=[], total=None, tags={})
    assert conv.decode(conv.encode(empty), Cart) == empty


def test_argument_lists_are_decoded_to_the_parameters_annotations() -> None:
    async def activity(ctx: duro.ActivityContext, cart: Cart, amounts: list[Money], tag: Tag | None,
                       n: int = 0) -> dict[str, Item]:
        raise NotImplementedError

    arg_hints, ret = parameter_hints(activity)
    assert arg_hints == [Cart, list[Money], Tag | None, int]
    cart = Cart(items=[Item("a", 1)], total=None, tags={})
    data = conv.encode_args([cart, [Money(amount=1), Money(amount=2)], Tag("k", "v"), 4])
    back = conv.decode_args(data, arg_hints)
    assert back == [cart, [Money(amount=1), Money(amount=2)], Tag("k", "v"), 4]
    assert isinstance(back[0], Cart) and isinstance(back[1][1], Money) and isinstance(back[2], Tag)
    # Fewer values than hints (defaults) and more values than hints (no conversion for the extra ones).
    assert conv.decode_args(conv.encode_args([cart]), arg_hints) == [cart]
    assert conv.decode_args(conv.encode_args([1, 2]), [float]) == [1.0, 2]
    assert conv.decode(conv.encode({"x": Item("x", 1)}), ret) == {"x": Item("x", 1)}


def test_argument_payload_must_be_an_array() -> None:
    with pytest.raises(TypeError, match="JSON array"):
        conv.decode_args(b'{"a": 1}', [])


def test_convert_is_the_same_conversion_for_decoded_values() -> None:
    assert convert({"sku": "a", "qty": 1}, Item) == Item("a", 1)
    assert convert([{"amount": 1}], list[Money]) == [Money(amount=1)]
    assert convert({"a": 1}, dict) == {"a": 1}
    assert convert(None, Cart) is None


def test_unknown_dataclass_keys_are_ignored_and_missing_ones_use_defaults() -> None:
    assert conv.decode(b'{"sku":"a","qty":1,"added_later":true}', Item) == Item("a", 1)


# ------------------------------------------------------------------ what cannot be encoded


class Opaque:
    pass


@pytest.mark.parametrize("value, names", [
    pytest.param(object(), ["object"], id="object"),
    pytest.param(Opaque(), ["Opaque"], id="custom-class"),
    pytest.param(b"raw", ["bytes"], id="bytes"),
    pytest.param({"payload": b"raw"}, ["bytes"], id="bytes-inside"),
    pytest.param([1, {"deep": [object()]}], ["object"], id="object-deep-inside"),
    pytest.param({"s": {Opaque()}}, ["Opaque"], id="set-of-unencodable-inside"),
    pytest.param(Item("a", b"bytes in a dataclass"), ["bytes"], id="bytes-in-dataclass"),  # type: ignore[arg-type]
    pytest.param(2**64, ["64-bit"], id="int-too-large"),
])
def test_unencodable_values_raise_a_clear_type_error(value: Any, names: list[str]) -> None:
    with pytest.raises(TypeError) as info:
        conv.encode(value)
    msg = str(info.value)
    assert "cannot encode" in msg
    for name in names:
        assert name in msg, msg
    assert "dataclasses" in msg  # says what would work
    with pytest.raises(TypeError):
        conv.encode_args([1, value])


def test_sets_are_encoded_as_sorted_lists() -> None:
    # docs/api.md ("Data conversion"): the default converter encodes sets (as JSON arrays).
    assert orjson.loads(conv.encode({"s": {3, 1, 2}})) == {"s": [1, 2, 3]}
    assert orjson.loads(conv.encode(frozenset({"b", "a"}))) == ["a", "b"]


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


class Size(enum.Enum):
    S = "small"
    L = "large"


@dataclass
class Cat:
    name: str
    lives: int = 9


@dataclass
class Dog:
    name: str
    good: bool


@dataclass
class Kennel:
    color: Color
    size: Size
    tags: set[str]
    frozen: frozenset[int]
    pet: Cat | Dog
    other: Dog | Cat | None = None
    pets: list[Cat | Dog] = dataclasses.field(default_factory=list)
    sizes: dict[str, Size] = dataclasses.field(default_factory=dict)


def test_enums_sets_and_unions_of_dataclasses_come_back_as_annotated() -> None:
    k = Kennel(Color.BLUE, Size.L, {"a", "b"}, frozenset({2, 1}), Dog("rex", True), Cat("tom"),
               [Cat("a", 3), Dog("b", False)], {"x": Size.S})
    back = conv.decode(conv.encode(k), Kennel)
    assert back == k
    assert type(back.color) is Color and type(back.tags) is set and type(back.frozen) is frozenset
    assert [type(p) for p in back.pets] == [Cat, Dog]
    assert convert(None, Cat | Dog | None) is None


def test_a_union_takes_the_first_member_the_value_fits() -> None:
    assert convert({"name": "x"}, Dog | Cat) == Cat("x")  # Dog needs "good": it does not fit
    assert convert({"name": "x", "good": True, "extra": 1}, Dog | Cat) == {"name": "x", "good": True, "extra": 1}
    assert convert(3, int | Color) == 3 and type(convert(3, int | Color)) is int
    assert convert(2, Size | Color) is Color.BLUE
    assert convert("large", Color | Size) is Size.L
    assert convert([1, 2], set[int] | str) == {1, 2}
    assert convert("s", list[int] | str) == "s"


def test_pydantic_v1_models_round_trip() -> None:
    from pydantic import v1

    class Order(v1.BaseModel):
        id: int
        color: Color
        when: datetime.datetime

    o = Order(id=1, color=Color.RED, when=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC))
    back = conv.decode(conv.encode(o), Order)
    assert back == o and isinstance(back, Order)


# ------------------------------------------------------------------ failures


def _raise(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """``exc`` raised (so it has a traceback), optionally ``from cause``."""
    try:
        if cause is None:
            raise exc
        raise exc from cause
    except BaseException as e:
        return e


def _chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None:
        out.append(exc)
        exc = exc.__cause__
    return out


def test_application_error_with_details_and_cause_chain_round_trips() -> None:
    root = _raise(ApplicationError("disk full", type="Disk", details=[{"free": 0}]))
    middle = _raise(ValueError("could not write"), root)
    top = _raise(ApplicationError("order failed", type="OrderError", non_retryable=True,
                                  details={"order": "A1", "items": [1, 2], "nested": {"ok": False}}), middle)

    d = failure_to_dict(top)
    assert orjson.loads(orjson.dumps(d)) == d  # plain JSON data
    back = failure_from_dict(orjson.loads(orjson.dumps(d)))

    assert isinstance(back, ApplicationError)
    assert str(back) == "order failed" and back.message == "order failed"
    assert back.type == "OrderError" and back.non_retryable is True
    assert back.details == {"order": "A1", "items": [1, 2], "nested": {"ok": False}}

    chain = _chain(back)
    assert len(chain) == 3
    inner = chain[1]
    assert isinstance(inner, ApplicationError)  # a plain Python exception comes back typed by its class name
    assert inner.type == "ValueError" and str(inner) == "could not write" and not inner.non_retryable
    last = chain[2]
    assert isinstance(last, ApplicationError) and last.type == "Disk" and last.details == [{"free": 0}]
    # The remote traceback travels along, readable.
    assert any("_raise" in note and "remote traceback" in note for note in getattr(back, "__notes__", []))


def test_failure_bytes_round_trip() -> None:
    err = _raise(ApplicationError("boom", type="Boom", details={"k": 1}))
    data = encode_failure(err)
    assert isinstance(data, bytes)
    back = decode_failure(data)
    assert isinstance(back, ApplicationError)
    assert (back.message, back.type, back.non_retryable, back.details) == ("boom", "Boom", False, {"k": 1})


def test_a_closed_run_error_round_trips() -> None:
    # A worker of another process refusing an update: the caller gets the same type back.
    err = duro.WorkflowClosedError("closed", workflow_id="w", run_id="ab" * 16, status="completed")
    back = decode_failure(encode_failure(err))
    assert isinstance(back, duro.WorkflowClosedError)
    assert (str(back), back.workflow_id, back.run_id, back.status) == ("closed", "w", "ab" * 16, "completed")


def test_application_error_defaults() -> None:
    back = failure_from_dict(failure_to_dict(ApplicationError("plain")))
    assert isinstance(back, ApplicationError)
    assert back.type == "ApplicationError" and back.details is None and back.non_retryable is False
    assert back.__cause__ is None


def test_unencodable_details_become_their_repr() -> None:
    err = ApplicationError("odd", details={"obj": Opaque()})
    d = failure_to_dict(err)
    orjson.dumps(d)  # still encodable
    back = failure_from_dict(d)
    assert isinstance(back, ApplicationError) and isinstance(back.details, str) and "Opaque" in back.details


def test_activity_error_with_timeout_cause_round_trips() -> None:
    timeout = _raise(TimeoutError("no heartbeat for 5s", timeout_type="heartbeat"))
    err = _raise(ActivityError("activity 'charge' failed", activity_type="charge", activity_id=3, attempt=4), timeout)
    back = decode_failure(encode_failure(err))
    assert isinstance(back, ActivityError)
    assert str(back) == "activity 'charge' failed"
    assert (back.activity_type, back.activity_id, back.attempt) == ("charge", 3, 4)
    cause = back.__cause__
    assert isinstance(cause, TimeoutError) and isinstance(cause, duro.TimeoutError)
    assert cause.timeout_type == "heartbeat" and str(cause) == "no heartbeat for 5s"


@pytest.mark.parametrize("timeout_type", ["start_to_close", "schedule_to_close", "heartbeat", "execution"])
def test_timeout_error_round_trips_its_type(timeout_type: str) -> None:
    back = failure_from_dict(failure_to_dict(TimeoutError(f"ran past {timeout_type}", timeout_type=timeout_type)))
    assert isinstance(back, duro.TimeoutError)
    assert back.timeout_type == timeout_type and str(back) == f"ran past {timeout_type}"


def test_activity_error_caused_by_application_error() -> None:
    app = ApplicationError("card declined", type="Declined", non_retryable=True, details={"code": 51})
    err = _raise(ActivityError("activity 'charge' failed", activity_type="charge", activity_id=1, attempt=1), app)
    back = failure_from_dict(failure_to_dict(err))
    assert isinstance(back, ActivityError)
    cause = back.__cause__
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable, cause.details) == ("Declined", True, {"code": 51})


def test_cancellation_and_termination_round_trip() -> None:
    for exc in (CancelledError("stop"), asyncio.CancelledError("stop")):
        back = failure_from_dict(failure_to_dict(exc))
        assert isinstance(back, CancelledError) and str(back) == "stop"
    back = failure_from_dict(failure_to_dict(TerminatedError("by operator")))
    assert isinstance(back, TerminatedError) and str(back) == "by operator"
