"""The request bodies of the two hot batch calls, encoded in one step with orjson.

botocore makes a request in steps: `before-parameter-build` handlers see the parameters,
its generic serializer walks them against the service model and encodes them with the
standard library's json, `before-call` handlers see the request, then botocore signs it,
sends it, retries the transport and parses the answer. For BatchWriteItem (25 items of
many attributes) and SendMessageBatch (up to 256 KiB of text) the walk and the encoding
cost more than all the rest of the call.

The handlers here take the big member out of the parameters before the walk, leaving an
empty stand-in of the same kind (so the walk is trivial and endpoint resolution still sees
the table names), encode the whole parameters once with orjson, and put that body into
the request before it is signed. Signing, credentials, endpoints, transport retries and
error parsing stay botocore's. Parameters orjson cannot encode exactly as the JSON
protocol would (integers beyond 64 bits, lone surrogates, None, bytes) take the generic
path unchanged, with one exception: a BatchWriteItem whose bytes are all B values (the
blocks' bodies and filters) is written by orjson with each B in base64, as the protocol
writes a blob; a BS, a B of another type or bytes anywhere else still take the generic path.

The client does not validate parameters (that cost more than the encoding saves), so what
orjson would send where botocore's serializer fails is refused here, as botocore's
validator words it (`ParamValidationError`, not retriable): a key no member of the model
names (orjson would send it as it is) and a float that is not finite (orjson writes NaN
and infinities as null).

Our calls pass only JSON-native values for these operations, where the JSON protocol's
serialisation is the identity; the parsed body is then the same, byte order of keys
aside (orjson writes UTF-8 where json writes \\u escapes).

The answer of ReceiveMessage (up to ten 256 KiB bodies, JSON inside JSON) is the same
the other way round: `before-parse` decodes its messages with orjson and leaves the
generic parser an empty body, unless an answer is an error or holds binary attributes
(base64 that the generic parser decodes).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from botocore.exceptions import ParamValidationError

# (service, operation) -> the member whose walk is skipped.
FAST_MEMBERS = {
    ("dynamodb", "BatchWriteItem"): "RequestItems",
    ("sqs", "SendMessageBatch"): "Entries",
}
_BODY = "logpipe_body"


# Types the JSON serializer converts (documents too: structures with `is_document_type`).
_CONVERTED = frozenset({"blob", "timestamp", "float", "double"})


def _special_names(name: str, shape: Any, seen: set[str]) -> set[str]:
    """The members in values of `shape` (a member called `name`) that the JSON serializer
    converts or renames: `name` itself when it is one (a list or map of converted values
    too), and those of the structures it leads to, each walked once for one `seen`."""
    names = {name} if "name" in shape.serialization else set()
    while shape.type_name in ("list", "map"):
        shape = shape.member if shape.type_name == "list" else shape.value
    if shape.type_name in _CONVERTED or (shape.type_name == "structure" and shape.is_document_type):
        names.add(name)
    elif shape.type_name == "structure" and shape.name not in seen:
        seen.add(shape.name)
        for key, member in shape.members.items():
            names |= _special_names(key, member, seen)
    return names


def special_keys(shape: Any) -> frozenset[str]:
    """Names of the members under `shape` that the JSON serializer does not copy as they are:
    blobs, timestamps and floats (converted), renamed members, documents; a map whose values
    hold such shapes is named itself (its keys are the caller's)."""
    members = shape.members.items() if shape is not None else ()
    return frozenset().union(*(_special_names(key, member, set()) for key, member in members))


def _gate(member: Any) -> frozenset[str] | None:
    """For a list of plain structures, the members of its items that can lead to a converted
    or renamed member; None for any other shape (or a renamed member itself)."""
    item = member.member if member.type_name == "list" else None
    if item is None or item.type_name != "structure" or item.is_document_type:
        return None
    if "name" in member.serialization:
        return None
    return frozenset(
        key for key, inner in item.members.items() if _special_names(key, inner, set())
    )


class _Special:
    """Whether an operation's parameters hold a member the serializer converts or renames.

    `pattern` finds such a member's key in the orjson body; scanning a body of 256 KiB
    costs about 0.1 ms, so where a top-level member is a list of structures (SQS's
    Entries), `gates` names the members of its items that can lead to one
    (MessageAttributes): entries without them need no scan. None: scan whenever the
    member is present.
    """

    def __init__(self, model: Any) -> None:
        shape = model.input_shape
        names = sorted(special_keys(shape))
        alternatives = b"|".join(re.escape(name.encode()) for name in names)
        self.pattern = re.compile(b'"(?:' + alternatives + b')":') if names else None
        members = shape.members.items() if shape is not None else ()
        self.gates = {
            key: _gate(member) for key, member in members if _special_names(key, member, set())
        }

    def found(self, params: dict[str, Any], body: bytes) -> bool:
        if self.pattern is None:
            return False
        for name, gate in self.gates.items():
            value = params.get(name)
            if value is None:
                continue
            if (
                gate is not None
                and isinstance(value, list)
                and all(isinstance(item, dict) and gate.isdisjoint(item) for item in value)
            ):
                continue
            return self.pattern.search(body) is not None
        return False


# (service, operation) -> its `_Special`.
_SPECIAL: dict[tuple[str, str], _Special] = {}


def _special(model: Any) -> _Special:
    key = (model.service_model.service_name, model.name)
    special = _SPECIAL.get(key)
    if special is None:
        special = _SPECIAL[key] = _Special(model)
    return special


def encode_body(params: dict[str, Any], model: Any = None) -> bytes | None:
    """The JSON protocol body of `params`, or None when the generic path must make it.

    With the operation's `model`, also None when a member the serializer would convert
    (a blob, a timestamp, a float) or rename is present: orjson writes keys without
    spaces and escapes every quote inside strings, so `"B":` in the body is a key B.
    """
    if any(value is None for value in params.values()):
        return None
    try:
        body = orjson.dumps(params, option=_PASSTHROUGH)
    except orjson.JSONEncodeError:
        return _with_binary(params, model)
    if model is not None and _special(model).found(params, body):
        return None
    return body


# Operations whose only converted members are DynamoDB's binary values (B and BS), and the
# member holding their items: the blocks' bodies and filters are B values.
BINARY_MEMBERS = {("dynamodb", "BatchWriteItem"): "RequestItems"}


def _with_binary(params: dict[str, Any], model: Any) -> bytes | None:
    """The body of a BatchWriteItem whose binary values are all B values of type bytes,
    written as the JSON protocol writes a blob (base64); None for anything else (a BS, a
    B of another type, bytes anywhere but in a B, a value orjson cannot encode)."""
    if model is None:
        return None
    member = BINARY_MEMBERS.get((model.service_model.service_name, model.name))
    if member is None:
        return None
    expected = _binary_values(params.get(member))
    if expected is None:
        return None
    written: list[bytes] = []

    def blob(value: Any) -> str:
        if type(value) is not bytes:
            raise TypeError(type(value).__name__)
        written.append(value)
        return base64.b64encode(value).decode("ascii")

    try:
        body = orjson.dumps(params, default=blob, option=_PASSTHROUGH)
    except orjson.JSONEncodeError:
        return None
    return body if len(written) == expected else None


def _binary_values(request_items: Any) -> int | None:
    """How many B values of type bytes `request_items` (BatchWriteItem's) holds in its items
    and keys, through maps and lists; None when it holds a BS or a B of another type."""
    if not isinstance(request_items, dict):
        return None
    found = 0
    for requests in request_items.values():
        for request in requests if isinstance(requests, list) else ():
            for kind, attributes in request.items() if isinstance(request, dict) else ():
                if not isinstance(attributes, dict):
                    return None
                inner = attributes.get("Item" if kind == "PutRequest" else "Key")
                if not isinstance(inner, dict):
                    return None
                count = _attribute_binaries(inner.values())
                if count is None:
                    return None
                found += count
    return found


def _attribute_binaries(values: Iterable[Any]) -> int | None:
    found = 0
    for value in values:
        if not isinstance(value, dict):
            continue
        if "BS" in value:
            return None
        if "B" in value:
            if type(value["B"]) is not bytes:
                return None
            found += 1
        nested = value.get("M")
        count = _attribute_binaries(
            nested.values() if isinstance(nested, dict) else value.get("L") or ()
        )
        if count is None:
            return None
        found += count
    return found


# Types orjson would write in its own way (datetimes, dataclasses, subclasses of str, int,
# dict, list): refused, so that the generic serializer decides what they become.
_PASSTHROUGH = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _children(value: Any, shape: Any, name: str) -> Iterator[tuple[Any, Any, str]]:
    """The values inside `value` with their shapes and names (None: a key no member names)."""
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict) and not shape.is_document_type:
        for key, inner in value.items():
            yield inner, shape.members.get(key), f"{name}.{key}"
    elif kind == "list" and isinstance(value, list):
        yield from ((inner, shape.member, f"{name}[{n}]") for n, inner in enumerate(value))
    elif kind == "map" and isinstance(value, dict):
        yield from ((inner, shape.value, f"{name}.{key}") for key, inner in value.items())


def unknown_key(value: Any, shape: Any, name: str) -> str | None:
    """botocore's report of the first key in `value` that no member of `shape` names (in
    structures, through lists and maps), or None. Strings and numbers are not walked."""
    for inner, member, path in _children(value, shape, name):
        if member is None:
            key = path.rsplit(".", 1)[1]
            return (
                f'Unknown parameter in {name}: "{key}", must be one of: {", ".join(shape.members)}'
            )
        report = unknown_key(inner, member, path)
        if report is not None:
            return report
    return None


def non_finite(value: Any, name: str) -> str | None:
    """A report naming the first float in `value` that is NaN or infinite, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{name}: {value} is not a finite number"
    if isinstance(value, dict):
        inside = ((inner, f"{name}.{key}") for key, inner in value.items())
    elif isinstance(value, list):
        inside = ((inner, f"{name}[{n}]") for n, inner in enumerate(value))
    else:
        return None
    for inner, path in inside:
        report = non_finite(inner, path)
        if report is not None:
            return report
    return None


def refuse_what_orjson_would_send_wrongly(params: dict[str, Any], model: Any, body: bytes) -> None:
    """Raise ParamValidationError for an unknown key or a non-finite float in `params`."""
    report = unknown_key(params, model.input_shape, "input")
    # orjson writes NaN and infinities as null: only a body holding null needs the walk
    # (strings are not walked into, so SendMessageBatch's costs ~10 µs, a regex 1.4 ms).
    if report is None and b"null" in body:
        report = non_finite(params, "input")
    if report is not None:
        raise ParamValidationError(report=report)


def _stand_in(value: Any) -> Any:
    # RequestItems keeps its table names (endpoint rules read them); a list becomes empty.
    return {name: [] for name in value} if isinstance(value, dict) else []


def take_body(params: dict[str, Any], model: Any, context: dict[str, Any], **kwargs: Any) -> None:
    """`before-parameter-build`: encode the body now, leave the walk a stand-in."""
    member = FAST_MEMBERS.get((model.service_model.service_name, model.name))
    if member is None or member not in params:
        return
    body = encode_body(params, model)
    if body is None:
        return  # botocore's serializer: NaN written as NaN, unknown keys a KeyError
    refuse_what_orjson_would_send_wrongly(params, model, body)
    context[_BODY] = body
    params[member] = _stand_in(params[member])


def call_body(params: dict[str, Any], context: dict[str, Any]) -> Any:
    """In a `before-call` handler: the body this call will send, whether `take_body`
    encoded it (`put_body` puts it in last) or botocore's serializer made it."""
    return context.get(_BODY, params.get("body"))


def put_body(params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
    """`before-call`: the request is built and not yet signed: give it the real body."""
    body = context.pop(_BODY, None)
    if body is not None:
        params["body"] = body


RECEIVE = ("sqs", "ReceiveMessage")
_BINARY = frozenset({"BinaryValue", "BinaryListValues"})


def parse_messages(
    operation_model: Any,
    response_dict: dict[str, Any],
    customized_response_dict: dict[str, Any],
    **kwargs: Any,
) -> None:
    """`before-parse` of ReceiveMessage: the messages decoded by orjson, as botocore would."""
    service = operation_model.service_model.service_name
    if (service, operation_model.name) != RECEIVE or response_dict["status_code"] != 200:
        return
    try:
        doc = orjson.loads(response_dict["body"])
    except orjson.JSONDecodeError:
        return
    if not isinstance(doc, dict) or doc.keys() != {"Messages"}:
        return
    shape = operation_model.output_shape.members["Messages"].member
    members = shape.members.keys()
    value_members = shape.members["MessageAttributes"].value.members.keys()
    messages = []
    for message in doc["Messages"]:
        attributes = message.get("MessageAttributes", {})
        if any(_BINARY & value.keys() for value in attributes.values()):
            return
        kept = {k: v for k, v in message.items() if k in members}
        if attributes:
            kept["MessageAttributes"] = {
                name: {k: v for k, v in value.items() if k in value_members}
                for name, value in attributes.items()
            }
        messages.append(kept)
    customized_response_dict["Messages"] = messages
    response_dict["body"] = b"{}"


def install(client: Any) -> None:
    """Serialise the client's hot batch calls with orjson, their answers parsed likewise.

    The client must not validate parameters (`parameter_validation=False`): validation
    runs after `before-parameter-build` and would see only the stand-in. Registered last,
    so handlers that count or change the parameters (metrics, fault injection) see them.
    """
    client.meta.events.register_last("before-parameter-build", take_body)
    client.meta.events.register_last("before-call", put_body)
    client.meta.events.register_last("before-parse", parse_messages)
