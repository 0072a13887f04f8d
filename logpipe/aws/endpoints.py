"""Endpoint resolution remembered per client for the calls it makes over and over.

Before each call botocore resolves the endpoint from the service's ruleset: it gathers a
value for every parameter of the ruleset (the operation's context parameters read from
the call's arguments, then the client's builtins: region, FIPS, dual-stack, the endpoint
URL, the account id) and asks the ruleset for the URL, headers and properties; the
properties may set the request's auth type and signing context. The rule evaluation
itself is cached by botocore; gathering the parameters is not, and cost about a tenth of
a 25-item BatchWriteItem's CPU.

The answer is a function of the client's configuration (fixed when it was made), the
operation and the values the ruleset reads: the operation's context parameters taken
from the arguments (table names for BatchWriteItem; none for SQS) and the builtins that
are computed per call (the account id of the credentials). `memoise_endpoints` keys a
small cache on those, lets botocore resolve on a miss, and on a hit replays exactly what
the miss did: the same URL, headers and properties, the same changes to the request
context, the same User-Agent feature codes added. The resolution stays botocore's.

Builtins that handlers of `before-endpoint-resolution` change per call would not be seen:
botocore registers such handlers for S3 only, and our clients register none.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from typing import Any

from aiobotocore._helpers import resolve_awaitable
from botocore.context import ClientContext, get_context, start_as_current_context

# A client calls a handful of operations on a handful of queues and tables; more distinct
# keys than this is not a steady state: past it, misses are resolved and not kept.
MAX_ENDPOINTS = 64

# The request-context keys a resolution sets when the endpoint names auth schemes.
_CONTEXT_KEYS = ("auth_type", "signing")


def _frozen(value: Any) -> Hashable:
    """`value` as a hashable key part; lists and dicts by their content."""
    if isinstance(value, list | tuple):
        return ("list", *(_frozen(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, str | int | float | bool) or value is None:
        return (type(value), value)  # True and 1 are equal keys; their endpoints may not be
    raise TypeError(type(value).__name__)


def _add_features(codes: frozenset[str]) -> None:
    """Add User-Agent feature codes to the call's context (they are codes, not feature ids)."""
    context = get_context()
    if context is not None and codes:
        context.features.update(codes)


class _Readers:
    """What the ruleset reads from one operation's arguments, read by botocore's methods."""

    def __init__(self, resolver: Any, operation_model: Any) -> None:
        self.resolver = resolver
        self.operation_model = operation_model
        self.dynamic = tuple(p.name for p in operation_model.context_parameters)
        self.paths = tuple(operation_model.operation_context_parameters)

    def key(self, params: dict[str, Any]) -> Hashable:
        resolver, model = self.resolver, self.operation_model
        return (
            tuple(
                _frozen(resolver._resolve_param_as_dynamic_context_param(name, model, params))
                for name in self.dynamic
            ),
            tuple(
                _frozen(resolver._resolve_param_as_operation_context_param(name, model, params))
                for name in self.paths
            ),
        )


class _Resolved:
    """What one resolution answered and added to the request context and feature codes."""

    def __init__(
        self,
        answer: tuple[str, dict[str, Any], dict[str, Any]],
        context: dict[str, Any],
        features: frozenset[str],
    ) -> None:
        self.answer = copy.deepcopy(answer)
        self.context = copy.deepcopy(context)
        self.features = features

    def replay(self, request_context: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        request_context.update(copy.deepcopy(self.context) if self.context else ())
        _add_features(self.features)
        url, headers, properties = self.answer
        return url, dict(headers), copy.deepcopy(properties) if properties else {}


class EndpointMemo:
    """A client's endpoint resolutions, keyed on what its ruleset reads; `limit` kept."""

    def __init__(self, client: Any, limit: int = MAX_ENDPOINTS) -> None:
        self.resolver = resolver = client._ruleset_resolver
        self.resolve = client._resolve_endpoint_ruleset
        self.limit = limit
        # Builtins computed per call (the credentials' account id) that a parameter uses.
        self.computed: tuple[Callable[[], Any], ...] = tuple(
            resolver._builtins[d.builtin]
            for d in resolver._param_definitions.values()
            if d.builtin is not None and callable(resolver._builtins.get(d.builtin))
        )
        self.readers: dict[str, _Readers] = {}
        self.cache: dict[Hashable, _Resolved] = {}
        self.misses = 0

    async def key(
        self, operation_model: Any, params: dict[str, Any] | None, ignore_signing_region: bool
    ) -> Hashable:
        reader = self.readers.get(operation_model.name)
        if reader is None:
            reader = self.readers[operation_model.name] = _Readers(self.resolver, operation_model)
        return (
            operation_model.name,
            ignore_signing_region,
            reader.key(params or {}),
            tuple([_frozen(await resolve_awaitable(b())) for b in self.computed]),
        )

    async def resolve_endpoint_ruleset(
        self,
        operation_model: Any,
        params: dict[str, Any],
        request_context: dict[str, Any],
        ignore_signing_region: bool = False,
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """`BaseClient._resolve_endpoint_ruleset`, answered from the cache when it can be."""
        try:
            key = await self.key(operation_model, params, ignore_signing_region)
        except TypeError:  # an argument the ruleset reads that is no plain value
            answer: tuple[str, dict[str, Any], dict[str, Any]] = await self.resolve(
                operation_model, params, request_context, ignore_signing_region
            )
            return answer
        hit = self.cache.get(key)
        if hit is not None:
            return hit.replay(request_context)
        self.misses += 1
        before = dict(request_context)
        with start_as_current_context(ClientContext()):
            answer = await self.resolve(
                operation_model, params, request_context, ignore_signing_region
            )
            context = get_context()
            features = frozenset(context.features if context is not None else ())
        _add_features(features)
        # botocore sets the auth type and signing context when the endpoint names auth
        # schemes, merging into a signing context already there: kept only when there was
        # none, so that replaying it is setting both keys; nothing else may have changed.
        set_keys = answer[2].get("authSchemes") is not None
        changed = {k: request_context[k] for k in _CONTEXT_KEYS} if set_keys else {}
        rest = {k: v for k, v in request_context.items() if k not in changed}
        kept = {k: v for k, v in before.items() if k not in changed}
        if "signing" not in before and rest == kept and len(self.cache) < self.limit:
            self.cache[key] = _Resolved(answer, changed, features)
        return answer


def memoise_endpoints(client: Any, limit: int = MAX_ENDPOINTS) -> EndpointMemo | None:
    """Answer the client's endpoint resolutions from an `EndpointMemo` (None: no ruleset)."""
    if client._ruleset_resolver is None:
        return None
    memo = EndpointMemo(client, limit)
    client._resolve_endpoint_ruleset = memo.resolve_endpoint_ruleset
    return memo
