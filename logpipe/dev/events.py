"""Events like real ones, for `logpipe bench` and `bench/percall.py`.

A fleet of HTTP services and workers logging as OpenTelemetry-instrumented services do:
random ids, trace and span ids; a dozen attributes, each of the cardinality it has in life
(a few methods and regions, ~20 routes, ~10k users, a pod per replica, a random request
id); messages from templates with variable parts, now and then a stack trace. An event is
sized by keeping what fits of these, then adding variable content such services log
(headers, SQL, URLs, request bodies, stack traces) up to its target: no filler is shared
between events, so what compression makes of them is what it would make of real logs.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

MIN_EVENT_BYTES = 200
MAX_EVENT_BYTES = 16384
# Each event's target is the size asked for, give or take this share (real events vary).
SIZE_SPREAD = 0.08
SERVICES = ("checkout", "payments", "search", "inventory", "auth", "shipping")
SERVICE_WEIGHTS = (30, 12, 25, 15, 12, 6)
LEVELS = ("debug", "info", "warn", "error")
LEVEL_WEIGHTS = (8, 82, 7, 3)
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
HTTP_METHOD_WEIGHTS = (70, 18, 5, 4, 3)
HTTP_ROUTES = (
    "/api/v1/orders",
    "/api/v1/orders/{id}",
    "/api/v1/orders/{id}/items",
    "/api/v1/cart/{id}",
    "/api/v1/cart/{id}/items",
    "/api/v1/products",
    "/api/v1/products/{id}",
    "/api/v1/products/{id}/reviews",
    "/api/v1/search",
    "/api/v1/users/{id}",
    "/api/v1/users/{id}/addresses",
    "/api/v1/payments",
    "/api/v1/payments/{id}/capture",
    "/api/v1/payments/{id}/refund",
    "/api/v1/inventory/{id}",
    "/api/v1/inventory/{id}/reserve",
    "/api/v1/shipments/{id}",
    "/api/v1/shipments/{id}/track",
    "/api/v2/recommendations",
    "/auth/token",
    "/auth/refresh",
    "/healthz",
)
HTTP_STATUSES = (200, 201, 204, 304, 400, 401, 403, 404, 409, 429, 500, 502, 503)
HTTP_STATUS_WEIGHTS = (780, 60, 30, 20, 30, 15, 5, 30, 5, 10, 10, 3, 2)
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2")
REGION_WEIGHTS = (50, 25, 20, 5)
VERSIONS = ("2.14.0", "2.14.1", "2.15.0-rc.2")
NAMESPACES = ("shop", "shop", "shop", "shop-canary")
USERS = 10_000
REPLICAS = 6  # pods per service
NODES = 24
TRACED = 0.92  # share of events that carry a trace and span id
STACK_TRACES = 0.5  # share of error messages that end with their stack trace
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
    "Go-http-client/2.0",
    "shop-ios/7.31.0 (iPhone15,2; iOS 18.1)",
)
ERRORS = (
    "ConnectionResetError: [Errno 104] Connection reset by peer",
    "TimeoutError: read timed out after 5.0 s",
    "KeyError: 'shipping_address'",
    "ValueError: invalid literal for int() with base 10: 'null'",
    "psycopg.errors.SerializationFailure: could not serialize access due to concurrent update",
    "botocore.exceptions.ClientError: ProvisionedThroughputExceededException",
    "redis.exceptions.ConnectionError: Error 111 connecting to cache:6379. Connection refused.",
)
FRAMES = (
    ("app/handlers/orders.py", "create_order"),
    ("app/handlers/orders.py", "get_order"),
    ("app/handlers/cart.py", "add_item"),
    ("app/services/payments.py", "capture"),
    ("app/services/payments.py", "_call_provider"),
    ("app/services/inventory.py", "reserve"),
    ("app/repositories/base.py", "fetch_one"),
    ("app/repositories/orders.py", "save"),
    ("app/clients/http.py", "request"),
    ("app/middleware/auth.py", "__call__"),
    ("app/middleware/tracing.py", "__call__"),
    ("site-packages/starlette/routing.py", "handle"),
    ("site-packages/httpx/_client.py", "send"),
    ("site-packages/psycopg/cursor.py", "execute"),
    ("site-packages/redis/connection.py", "connect"),
)
SEARCH_TERMS = (
    "running shoes",
    "usb-c cable",
    "wireless earbuds",
    "crème brûlée torch",
    "standing desk",
    "coffee grinder",
    "rain jacket",
    "4k monitor",
    "yoga mat",
    "mechanical keyboard",
    "garden hose",
    "baby stroller",
    "phone case",
    "air fryer",
    "led bulbs",
    "café table",
)
TABLES = ("orders", "order_items", "carts", "products", "users", "payments", "shipments")
FLAGS = (
    "new-checkout-flow",
    "recs-v2",
    "fast-search",
    "one-click-pay",
    "free-shipping-banner",
    "inventory-cache",
    "dark-mode",
    "gift-wrap",
    "price-alerts",
    "split-payments",
)
STATE_CHANGES = (
    ("pending", "paid"),
    ("paid", "packed"),
    ("packed", "shipped"),
    ("shipped", "delivered"),
)
CURRENCIES = ("USD", "USD", "USD", "EUR", "GBP", "AUD")
COUPONS = ("null", "null", "null", '"WINTER10"', '"FREESHIP"')
PROVIDERS = ("stripe", "adyen", "paypal")
DECLINES = ("card_declined", "processing_error", "rate_limit")
CARRIERS = ("ups", "fedex", "dhl", "usps")
WAREHOUSES = ("IAD4", "PDX2", "DUB1", "SYD3")
SIGN_INS = ("password", "google", "apple", "sso")
SOURCES = ("google", "newsletter", "instagram", "direct")
JOBS = ("reindex-products", "expire-carts", "send-digest", "sync-inventory", "settle-payments")
TOPICS = ("orders.created", "payments.captured", "inventory.changed", "shipments.updated")
FIELDS = ("email", "quantity", "postal_code", "card.exp_month", "items[0].sku", "coupon")
REASONS = ("is required", "must be positive", "has an invalid format", "is too long")
POD_CHARS = "bcdfghjklmnpqrstvwxz2456789"
# JSON bytes of a trace and span id; of an attributes object's name and braces, less the
# comma its last attribute does without (each attribute is counted with one).
TRACE_BYTES = len(',"trace_id":"","span_id":""') + 32 + 16
ATTRIBUTES_BYTES = len(',"attributes":{}') - 1
# The shortest value a padding attribute is given (shorter, the room goes to the message).
SMALLEST_VALUE = 8

T = TypeVar("T")


def _weighted(values: Sequence[T], weights: Sequence[float]) -> Callable[[Callable[[], float]], T]:
    """A picker of `values` by `weights`: one uniform draw and a bisect."""
    bounds = list(itertools.accumulate(weights))
    total = bounds[-1]

    def pick(uniform: Callable[[], float]) -> T:
        return values[bisect.bisect_right(bounds, uniform() * total)]

    return pick


_pick_service = _weighted(SERVICES, SERVICE_WEIGHTS)
_pick_level = _weighted(LEVELS, LEVEL_WEIGHTS)
_pick_method = _weighted(HTTP_METHODS, HTTP_METHOD_WEIGHTS)
_pick_status = _weighted(HTTP_STATUSES, HTTP_STATUS_WEIGHTS)
_pick_region = _weighted(REGIONS, REGION_WEIGHTS)


class _Fleet:
    """The pods and nodes of one run's services, drawn from its generator."""

    def __init__(self, rng: random.Random) -> None:
        def word(k: int) -> str:
            return "".join(rng.choices(POD_CHARS, k=k))

        self.pods: dict[str, list[str]] = {}
        for service in SERVICES:
            replica_set = word(10)
            self.pods[service] = [f"{service}-{replica_set}-{word(5)}" for _ in range(REPLICAS)]
        self.nodes = [
            f"ip-10-{rng.randrange(4)}-{rng.randrange(256)}-{rng.randrange(256)}.ec2.internal"
            for _ in range(NODES)
        ]


class _Request:
    """What one event is about: the variable parts its message and attributes share, and
    the draws that make them (bound methods of one `random.Random`: fast, repeatable)."""

    def __init__(self, rng: random.Random, fleet: _Fleet) -> None:
        self.random = rng.random
        self.bits = rng.getrandbits
        self.fleet = fleet
        self.service = _pick_service(self.random)
        self.method = _pick_method(self.random)
        self.route = self.choice(HTTP_ROUTES)
        self.path = self.route.replace("{id}", str(self.num(1, 10_000_000)))
        self.status = _pick_status(self.random)
        self.duration = self.ms()
        self.user = f"usr_{self.num(0, USERS):05d}"
        self.trace_id = self.hex(32)
        self.span_id = self.hex(16)
        if self.status >= 500:
            self.level = "error"
        elif self.status in (409, 429):
            self.level = "warn"
        else:
            self.level = _pick_level(self.random)

    def num(self, low: int, high: int) -> int:
        """An integer in [low, high)."""
        return low + int(self.random() * (high - low))

    def choice(self, values: Sequence[T]) -> T:
        return values[int(self.random() * len(values))]

    def hex(self, chars: int) -> str:
        return f"{self.bits(chars * 4):0{chars}x}"

    def uuid(self) -> str:
        h = self.hex(32)
        variant = "89ab"[int(h[16], 16) & 3]
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"

    def ip(self) -> str:
        b = self.bits(32)
        return f"{b >> 24}.{b >> 16 & 255}.{b >> 8 & 255}.{b & 255}"

    def ms(self) -> float:
        """A latency in ms, log-normal: a median of 12, a long tail to hundreds."""
        return round(math.exp(2.5 + 1.1 * _normal(self.random)), 2)

    def order(self) -> str:
        return f"ord_{self.hex(12)}"

    def money(self) -> str:
        return f"{self.num(199, 250_000) / 100:.2f} {self.choice(CURRENCIES)}"

    def traceback(self, want: int) -> str:
        """A Python traceback of about `want` characters (three frames at least)."""
        lines = ["Traceback (most recent call last):"]
        size = len(lines[0])
        while size < want or len(lines) < 4:
            path, function = self.choice(FRAMES)
            line = f'  File "/srv/{self.service}/{path}", line {self.num(12, 900)}, in {function}'
            lines.append(line)
            size += len(line) + 1
        lines.append(self.choice(ERRORS))
        return "\n".join(lines)


def _normal(uniform: Callable[[], float]) -> float:
    """A standard normal draw (Box-Muller, one of the pair)."""
    return math.sqrt(-2.0 * math.log(1.0 - uniform())) * math.cos(math.tau * uniform())


# Message templates by level (about twenty), each filling its variable parts from the
# request. Plain request lines are the most common message, as in life.
_MESSAGES: dict[str, tuple[Callable[[_Request], str], ...]] = {
    "debug": (
        lambda r: f"cache hit for product:{r.num(1, 200_000)} (ttl {r.num(1, 3600)}s)",
        lambda r: f"query on {r.choice(TABLES)} took {r.ms()} ms, {r.num(0, 500)} rows",
        lambda r: f"connection from pool ({r.num(1, 50)}/50 busy) after {r.ms()} ms",
    ),
    "info": (
        lambda r: f"{r.method} {r.path} {r.status} {r.duration}ms",
        lambda r: f"{r.method} {r.path} {r.status} {r.duration}ms",
        lambda r: f"{r.method} {r.path} {r.status} {r.duration}ms",
        lambda r: f"order {r.order()} placed by {r.user}: {r.num(1, 12)} items, total {r.money()}",
        lambda r: (
            f"payment pay_{r.hex(16)} captured via {r.choice(PROVIDERS)} ({r.money()}) "
            f"in {r.ms()} ms"
        ),
        lambda r: (
            f'search q="{r.choice(SEARCH_TERMS)}" returned {r.num(0, 5000)} results '
            f"in {r.ms()} ms (page {r.num(1, 9)})"
        ),
        lambda r: f"user {r.user} signed in from {r.ip()} with {r.choice(SIGN_INS)}",
        lambda r: (
            f"reserved {r.num(1, 9)} x SKU-{r.num(10_000, 100_000)} at warehouse "
            f"{r.choice(WAREHOUSES)} for {r.order()}"
        ),
        lambda r: "shipment shp_{} {} -> {} ({}, tracking 1Z{})".format(
            r.hex(10), *r.choice(STATE_CHANGES), r.choice(CARRIERS), r.hex(16).upper()
        ),
        lambda r: f"cache miss for user:{r.user}:cart, loaded from db in {r.ms()} ms",
        lambda r: (
            f"job {r.choice(JOBS)} finished: {r.num(0, 100_000)} records in {r.ms() / 10:.1f}s"
        ),
        lambda r: f"upstream {r.choice(SERVICES)} answered {r.status} in {r.ms()} ms",
        lambda r: f"feature flag {r.choice(FLAGS)} is {r.choice(('on', 'off'))} for {r.user}",
    ),
    "warn": (
        lambda r: (
            f"slow request: {r.method} {r.path} took {r.duration + 500:.2f} ms (threshold 500 ms)"
        ),
        lambda r: (
            f"retrying call to {r.choice(SERVICES)} (attempt {r.num(2, 6)}/5) after "
            f"{r.choice(ERRORS)}"
        ),
        lambda r: f"rate limit reached for api key ak_{r.hex(8)}: {r.num(600, 5000)} req/min",
        lambda r: f"request to {r.path} refused: field '{r.choice(FIELDS)}' {r.choice(REASONS)}",
    ),
    "error": (
        lambda r: f"failed to process order {r.order()}: {r.choice(ERRORS)}",
        lambda r: f"unhandled exception in {r.method} {r.path}",
        lambda r: (
            f"payment provider {r.choice(PROVIDERS)} returned {r.choice(DECLINES)} "
            f"for pay_{r.hex(16)}"
        ),
        lambda r: f"could not publish evt_{r.hex(20)} to {r.choice(TOPICS)}: {r.choice(ERRORS)}",
    ),
}


def _message(r: _Request) -> str:
    message = r.choice(_MESSAGES[r.level])(r)
    if r.level == "error" and r.random() < STACK_TRACES:
        message += "\n" + r.traceback(r.num(200, 900))
    return message


def _attributes(r: _Request) -> tuple[tuple[str, object], ...]:
    """A dozen attributes and a few more, the most telling first (what a small event keeps)."""
    return (
        ("http.method", r.method),
        ("http.route", r.route),
        ("http.status_code", r.status),
        ("duration_ms", r.duration),
        ("user.id", r.user),
        ("cloud.region", _pick_region(r.random)),
        ("k8s.pod.name", r.choice(r.fleet.pods[r.service])),
        ("request_id", r.uuid()),
        ("service.version", r.choice(VERSIONS)),
        ("url.path", r.path),
        ("k8s.node.name", r.choice(r.fleet.nodes)),
        ("client.address", r.ip()),
        ("http.response.body.size", r.num(0, 60_000) if r.status != 204 else 0),
        ("user_agent.original", r.choice(USER_AGENTS)),
        ("k8s.namespace.name", r.choice(NAMESPACES)),
    )


# The long makers draw one 64-bit number a row and take its fields from its bits: a row's
# values are independent enough, and 30,000 events of 4 KB take a second, not five.


def _sql(r: _Request, want: int) -> str:
    table = r.choice(TABLES)
    if want < 300 or r.random() < 0.5:
        return (
            f"SELECT id, status, total_cents, currency, created_at, updated_at FROM {table} "
            f"WHERE user_id = {r.num(0, USERS)} AND created_at > '2026-{r.num(1, 13):02d}-"
            f"{r.num(1, 29):02d}T{r.num(0, 24):02d}:{r.num(0, 60):02d}:00Z' "
            f"ORDER BY created_at DESC LIMIT {r.choice((20, 50, 100))}"
        )
    rows = []
    size = 80
    while size < want:
        b = r.bits(64)
        rows.append(
            f"('ord_{b & 0xFFFFFFFFFFFF:012x}', 'SKU-{10_000 + (b >> 48) % 90_000}', "
            f"{1 + (b >> 20) % 8}, {199 + (b >> 24) % 99_800})"
        )
        size += len(rows[-1]) + 2
    return f"INSERT INTO {table} (order_id, sku, quantity, price_cents) VALUES {', '.join(rows)}"


def _request_body(r: _Request, want: int) -> str:
    items = []
    size = 100
    while size < want:
        b = r.bits(64)
        items.append(
            f'{{"sku":"SKU-{10_000 + b % 90_000}","qty":{1 + (b >> 17) % 8},'
            f'"price_cents":{199 + (b >> 20) % 99_800},"gift":{"true" if b >> 63 else "false"}}}'
        )
        size += len(items[-1]) + 1
    return (
        f'{{"cart_id":"{r.uuid()}","currency":"{r.choice(CURRENCIES)}",'
        f'"items":[{",".join(items)}],"coupon":{r.choice(COUPONS)}}}'
    )


def _response_body(r: _Request, want: int) -> str:
    products = []
    size = 60
    while size < want:
        b = r.bits(64)
        products.append(
            f'{{"id":{1 + b % 200_000},"name":"{SEARCH_TERMS[(b >> 18) % len(SEARCH_TERMS)]}",'
            f'"price_cents":{199 + (b >> 22) % 99_800},"stock":{(b >> 39) % 400},'
            f'"rating":{1 + (b >> 48) % 40 / 10}}}'
        )
        size += len(products[-1]) + 1
    return f'{{"products":[{",".join(products)}],"next":"{r.hex(24)}"}}'


def _url(r: _Request, want: int) -> str:
    return (
        f"https://shop.example.com{r.path}?utm_source={r.choice(SOURCES)}"
        f"&utm_campaign=c{r.num(1, 400)}&page={r.num(1, 20)}&cursor={r.hex(r.num(16, 48))}"
    )


def _cookie(r: _Request, want: int) -> str:
    return (
        f"session={r.hex(32)}; _ga=GA1.2.{r.num(0, 10**9)}.{r.num(1_700_000_000, 1_770_000_000)};"
        f" cart={r.hex(16)}; consent=analytics:{r.num(0, 2)}"
    )


def _flags(r: _Request, want: int) -> str:
    return ",".join(f"{flag}={'on' if r.random() < 0.5 else 'off'}" for flag in FLAGS[::2])


def _forwarded(r: _Request, want: int) -> str:
    return ", ".join(r.ip() for _ in range(r.num(1, 4)))


def _traceparent(r: _Request, want: int) -> str:
    return f"00-{r.trace_id}-{r.hex(16)}-01"


def _stack(r: _Request, want: int) -> str:
    return r.traceback(want) if r.level in ("warn", "error") else ""


# Variable content an event is padded with, up to its target size: (name, maker, cap). A
# maker returns about `want` characters where it can (at most `cap`), or what it has.
_PADDING: tuple[tuple[str, Callable[[_Request, int], str], int], ...] = (
    ("http.request.header.x-forwarded-for", _forwarded, 0),
    ("db.statement", _sql, 1500),
    ("url.full", _url, 0),
    ("http.request.header.cookie", _cookie, 0),
    ("exception.stacktrace", _stack, 2500),
    ("feature_flags", _flags, 0),
    ("http.request.header.traceparent", _traceparent, 0),
    ("messaging.message.id", lambda r, want: r.uuid(), 0),
    ("http.request.body", _request_body, 1500),
)
# What fills the rest of a large event once every padding above has had its turn.
_LAST_PADDING = ("http.response.body", _response_body)


def make_events(
    run: str, count: int, now_ms: int, event_bytes: int = 1024, seed: int | None = None
) -> list[dict[str, Any]]:
    """`count` events like real ones, each within SIZE_SPREAD of `event_bytes` long as sent
    (its JSON). Ids are random, distinct and start with `run` (so the read-back counts
    exactly); timestamps are given (so a retry cannot double an event). The same `seed`
    (default: `run`) gives the same events."""
    if not MIN_EVENT_BYTES <= event_bytes <= MAX_EVENT_BYTES:
        raise ValueError(f"event_bytes must be {MIN_EVENT_BYTES}-{MAX_EVENT_BYTES}")
    rng = random.Random(run if seed is None else seed)
    fleet = _Fleet(rng)
    ids: set[str] = set()
    events = []
    for n in range(count):
        event_id = f"{run}-{rng.getrandbits(96):024x}"
        while event_id in ids:
            event_id = f"{run}-{rng.getrandbits(96):024x}"
        ids.add(event_id)
        target = round(event_bytes * (1 - SIZE_SPREAD + 2 * SIZE_SPREAD * rng.random()))
        # 100 events a millisecond, each up to 250 ms late: near the order they are sent in.
        timestamp = now_ms + n // 100 - int(rng.random() * 250)
        events.append(_event(_Request(rng, fleet), event_id, timestamp, target))
    return events


def _event(r: _Request, event_id: str, timestamp: int, target: int) -> dict[str, Any]:
    """One event of `target` bytes (its JSON): what fits, then padding, then the message
    takes the last few bytes."""
    message = _message(r)
    event: dict[str, Any] = {
        "id": event_id,
        "service": r.service,
        "level": r.level,
        "timestamp": timestamp,
        "message": message,
    }
    room = target - len(orjson.dumps(event))
    if room < 0:  # a long message in a small event: only the message gives way
        event["message"] = _cut(message, len(orjson.dumps(message)) + room)
        return event
    if room >= TRACE_BYTES and r.random() < TRACED:
        event["trace_id"] = r.trace_id
        event["span_id"] = r.span_id
        room -= TRACE_BYTES
    attributes, room = _fill(r, room - ATTRIBUTES_BYTES)
    if attributes:
        event["attributes"] = attributes
    else:
        room += ATTRIBUTES_BYTES
    if room > 0:
        event["message"] = message + f" req={r.hex(32)}"[:room]
    return event


def _fill(r: _Request, room: int) -> tuple[dict[str, object], int]:
    """Attributes for `room` bytes (their JSON, commas included): each of the dozen that
    fits, then padding from a random start, the last one cut to fit. The room left."""
    attributes: dict[str, object] = {}
    for name, value in _attributes(r):
        cost = len(name) + 4 + len(orjson.dumps(value))  # "name":value,
        if cost <= room:
            attributes[name] = value
            room -= cost
    start = int(r.random() * len(_PADDING))
    for name, maker, cap in (*_PADDING[start:], *_PADDING[:start], (*_LAST_PADDING, room)):
        want = room - len(name) - 6  # "name":"",
        if want < SMALLEST_VALUE:
            continue
        value = maker(r, min(want, cap) if cap else want)
        if not value:
            continue
        size = len(orjson.dumps(value))
        if size > want + 2:
            value = _cut(value, want + 2)
            size = len(orjson.dumps(value))
        attributes[name] = value
        room -= len(name) + 4 + size
    return attributes, room


def _cut(text: str, size: int) -> str:
    """The longest start of `text` whose JSON string is at most `size` bytes."""
    if len(orjson.dumps(text)) <= size:
        return text
    fits, too_long = 0, len(text)
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if len(orjson.dumps(text[:middle])) <= size:
            fits = middle
        else:
            too_long = middle
    return text[:fits]
