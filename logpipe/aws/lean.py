"""A lean path for the hot JSON-protocol calls: encode, sign, send, parse, and little else.

aiobotocore makes every call through generic machinery: a dozen event emissions, the
request built as a dict, then as an `AWSRequest` (headers in an `email.message`), then
as an `AWSPreparedRequest` (headers copied again), the URL parsed several times, the
response turned into a dict for the parser and again for history. For the calls the
processor and the ingestor make thousands of times (BatchWriteItem; SendMessageBatch,
ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibilityBatch) most of it does
nothing. `install` replaces those methods of a client with `LeanCalls.call`, which
makes the same call in fewer steps and keeps botocore for everything that matters:

- the events our handlers and the fault injector use, emitted with the same keyword
  arguments and in the same order: `provide-client-params` and `before-parameter-build`
  (the client's own `_emit_api_params`), `before-call` (with the same request dict; its
  first answer short-circuits the call), `request-created` (the client's signer with its
  credentials, its User-Agent rebuild, the retry headers), `after-call`, and
  `after-call-error` when sending fails;
- endpoint resolution: the client's `_resolve_endpoint_ruleset` (remembered by
  `aws/endpoints.py`), its auth type and signing context put into the request context;
- transport: the aiohttp session of the client's aiobotocore HTTP session (its pool,
  timeouts, keep-alive, proxies and TLS), its failures mapped to the same botocore
  exceptions as `AIOHTTPSession.send` maps them (`_Transport`);
- answers: the client's JSON response parser (a copy that decodes with orjson where
  orjson decodes exactly as the standard library would, and with the standard library
  where it does not), its modeled error fields, and the same exception classes with the
  same `response` as `_make_api_call` raises.

What is left out does nothing for these calls on our clients: the `before-send`,
`response-received` and `before-parse` events (no handlers but ours), `needs-retry` of a
client that makes one attempt (replayed: the standard handler only notes
`MaxAttemptsReached` in the answer's metadata), history recording (off), checksums and
compression (these operations have none), and the intermediate request objects. Whenever
that does not hold (a handler on a skipped event, history on, a client that retries by
itself) or a call is unusual (parameters orjson cannot encode as the JSON serializer
would, a `before-call` handler that leaves a body that is not bytes), the call takes
botocore's generic path unchanged, from wherever it is.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError as FutureCancelledError
from typing import Any

import aiohttp
import orjson
from aiobotocore._endpoint_helpers import _text
from aiobotocore.awsrequest import AioAWSResponse
from aiobotocore.context import start_as_current_context
from aiobotocore.httpchecksum import apply_request_checksum
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.retries.standard import AioRetryHandler, AioStandardRetryConditions
from aiohttp.http_exceptions import BadStatusLine
from botocore.auth import _host_from_url
from botocore.awsrequest import prepare_request_dict
from botocore.client import resolve_checksum_context
from botocore.compat import HTTPHeaders
from botocore.compress import maybe_compress_request
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)
from botocore.history import get_global_history_recorder
from botocore.hooks import first_non_none_response
from botocore.httpsession import mask_proxy_url
from botocore.utils import ensure_boolean
from multidict import CIMultiDict
from yarl import URL

from logpipe.aws import serialise

# The lean operations: (service name, operation) -> the client's method name.
LEAN_OPERATIONS = {
    ("dynamodb", "BatchWriteItem"): "batch_write_item",
    ("sqs", "SendMessageBatch"): "send_message_batch",
    ("sqs", "ReceiveMessage"): "receive_message",
    ("sqs", "DeleteMessageBatch"): "delete_message_batch",
    ("sqs", "ChangeMessageVisibilityBatch"): "change_message_visibility_batch",
}

# Events of the generic path the lean path does not emit: only these handlers may be on them.
_SKIPPED_EVENTS = {
    "before-send": frozenset(),
    "response-received": frozenset(),
    "before-parse": frozenset({serialise.parse_messages}),
}

_history = get_global_history_recorder()


class LeanRequest:
    """What botocore's signer, its `request-created` handlers and aiobotocore's HTTP session
    read and write of a request: `AWSRequest` and `AWSPreparedRequest` in one, without a
    second copy of the headers or a preparation each time the body is read."""

    __slots__ = ("auth_path", "body", "context", "headers", "method", "params", "url")

    stream_output = False

    def __init__(self, request_dict: dict[str, Any], body: bytes) -> None:
        self.method: str = request_dict["method"]
        self.url: str = request_dict["url"]
        self.headers = HTTPHeaders()
        for name, value in request_dict["headers"].items():
            self.headers[name] = value
        self.body = body
        self.params: dict[str, Any] = {}
        self.context: dict[str, Any] = request_dict["context"]
        self.auth_path: str | None = request_dict.get("auth_path")

    def __repr__(self) -> str:
        return f"<LeanRequest method={self.method}, url={self.url}>"


# Distinct URLs a client's transport remembers (a handful of queues and one endpoint).
MAX_TARGETS = 64


def _mapped_error(e: Exception, request: LeanRequest, proxy_url: str | None) -> Exception | None:
    """The botocore exception aiobotocore's HTTP session raises for `e` (None: `e` itself),
    tested in the order of its `except` clauses."""
    url = request.url
    error: Exception | None = None
    if isinstance(e, aiohttp.ClientSSLError):
        error = SSLError(endpoint_url=url, error=e)
    elif isinstance(e, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        error = ProxyConnectionError(proxy_url=mask_proxy_url(proxy_url), error=e)
    elif isinstance(
        e, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | BadStatusLine
    ):
        error = ConnectionClosedError(error=e, request=request, endpoint_url=url)
    elif isinstance(e, aiohttp.ServerTimeoutError):
        connecting = str(e).lower().startswith("connect")
        error = (ConnectTimeoutError if connecting else ReadTimeoutError)(endpoint_url=url, error=e)
    elif isinstance(e, aiohttp.ClientConnectionError | socket.gaierror):  # connector errors too
        error = EndpointConnectionError(endpoint_url=url, error=e)
    elif isinstance(e, asyncio.TimeoutError):
        error = ReadTimeoutError(endpoint_url=url, error=e)
    elif not isinstance(e, FutureCancelledError):
        error = HTTPClientError(error=e)
    return error


class _Transport:
    """The client's aiobotocore HTTP session, its aiohttp session used directly.

    `AIOHTTPSession.send` parses the URL and the proxy settings on every request and
    copies the headers twice; here the URL and its proxy are remembered, and the
    request goes to the same aiohttp session (the pool, timeouts, keep-alive, TLS and
    proxies aiobotocore set up) with the same headers, and its failures become the
    same botocore exceptions (`_mapped_error`). Requests this does not cover (chunked
    bodies, aiobotocore's experimental proxy Host header, another session class) are
    sent by `AIOHTTPSession.send` itself.
    """

    def __init__(self, http_session: Any) -> None:
        self.http_session = http_session
        self.targets: dict[str, tuple[URL, str | None, dict[str, str]]] = {}

    def covers(self, request: LeanRequest, proxy_url: str | None) -> bool:
        return (
            type(self.http_session) is AIOHTTPSession
            and "Transfer-Encoding" not in request.headers
            and (
                proxy_url is None  # the experimental header goes to a proxy only
                or not ensure_boolean(os.environ.get("BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER"))
            )
        )

    def _target(self, url: str) -> tuple[URL, str | None, dict[str, str]]:
        target = self.targets.get(url)
        if target is None:
            config = self.http_session._proxy_config
            target = (
                URL(url, encoded=True),
                config.proxy_url_for(url),
                config.proxy_headers_for(url),
            )
            if len(self.targets) < MAX_TARGETS:
                self.targets[url] = target
        return target

    async def send(self, request: LeanRequest) -> Any:
        try:
            url, proxy_url, proxy_headers = self._target(request.url)
        except Exception:  # whatever AIOHTTPSession.send makes of such a URL
            return await self.http_session.send(request)
        if not self.covers(request, proxy_url):
            return await self.http_session.send(request)
        try:
            headers = CIMultiDict((name, _text(value)) for name, value in request.headers.items())
            headers["Accept-Encoding"] = "identity"
            session = await self.http_session._get_session(proxy_url)
            response = await session.request(
                request.method,
                url=url,
                headers=headers,
                data=request.body,
                proxy=proxy_url,
                proxy_headers=dict(proxy_headers),
            )
            http = AioAWSResponse(
                str(response.url),
                response.status,
                {k.decode("utf-8").lower(): v.decode("utf-8") for k, v in response.raw_headers},
                response,
            )
            await http.content
            return http
        except Exception as e:
            mapped = _mapped_error(e, request, proxy_url)
            if mapped is None:
                raise
            raise mapped  # noqa: B904 (raised in the handler, as aiobotocore does)


class _Operation:
    """What a lean call of one operation needs that is the same for every call."""

    def __init__(self, client: Any, name: str) -> None:
        model = client.meta.service_model.operation_model(name)
        self.name = name
        self.model = model
        service_id = model.service_model.service_id.hyphenize()
        self.before_call = f"before-call.{service_id}.{name}"
        self.request_created = f"request-created.{service_id}.{name}"
        self.needs_retry = f"needs-retry.{service_id}.{name}"
        self.after_call = f"after-call.{service_id}.{name}"
        self.after_call_error = f"after-call-error.{service_id}.{name}"
        self.members = frozenset(model.input_shape.members) if model.input_shape else frozenset()
        # The request of empty parameters: the method, path and headers of every request.
        self.template = client._serializer.serialize_to_request({}, model)
        self.urls: dict[str, str] = {}
        self.plain = (
            model.service_model.protocol == "json"
            and not model.http_checksum
            and not model.http_checksum_required
            and model.request_compression is None
            and model.endpoint is None
            and not model.has_streaming_input
            and not model.has_streaming_output
            and not model.has_event_stream_output
            and "host_prefix" not in self.template
        )

    def encode(self, params: dict[str, Any]) -> bytes | None:
        """The JSON body of `params` when orjson writes what the serializer would mean."""
        if not params.keys() <= self.members:
            return None
        return serialise.encode_body(params, self.model)

    def request_dict(
        self, body: bytes, endpoint_url: str, headers: dict[str, str], context: dict[str, Any]
    ) -> dict[str, Any]:
        """The request dict `_convert_to_request_dict` makes, but for the User-Agent."""
        template = self.template
        request = {
            "url_path": template["url_path"],
            "query_string": template["query_string"],
            "method": template["method"],
            "headers": {**template["headers"], **headers},
            "body": body,
        }
        url = self.urls.get(endpoint_url)
        if url is None:
            prepare_request_dict(request, endpoint_url=endpoint_url, context=context)
            url = request["url"]
            if len(self.urls) < MAX_TARGETS:
                self.urls[endpoint_url] = url
        request["url"] = url
        request["context"] = context
        return request


class LeanCalls:
    """A client's lean calls; `install` puts them in place of the client's methods."""

    def __init__(self, client: Any) -> None:
        self.client = client
        service = client.meta.service_model.service_name
        self.operations = {
            op: _Operation(client, op) for (name, op) in LEAN_OPERATIONS if name == service
        }
        parser = client._endpoint._response_parser_factory.create_parser(
            client.meta.service_model.resolved_protocol
        )
        standard = parser._parse_body_as_json

        def parse_body_as_json(body: bytes) -> Any:
            # orjson refuses what it cannot decode as json does (NaN, huge integers, lone
            # surrogates); those answers, and empty ones, are the parser's own.
            if body:
                try:
                    return orjson.loads(body)
                except orjson.JSONDecodeError:
                    pass
            return standard(body)

        parser._parse_body_as_json = parse_body_as_json
        self.parser = parser
        self.transport = _Transport(client._endpoint.http_session)
        self._hosts: dict[str, str] = {}
        self._emitter = client.meta.events._emitter
        self._checked: object = None
        self._usable = False
        # The only `needs-retry` handler is botocore's standard one, allowing one attempt.
        self._one_attempt = False
        # Calls sent the lean way (the others took the generic path, or were short-circuited).
        self.sent = 0

    def usable(self) -> bool:
        """True while nothing the lean path leaves out would have done anything."""
        cache = self._emitter._lookup_cache
        if cache is not self._checked:  # replaced whenever a handler is registered
            self._usable = self._check()
            self._one_attempt = self._usable and self._standard_one_attempt()
            self._checked = cache
        return self._usable and not _history._enabled

    def _check(self) -> bool:
        client = self.client
        retries = client.meta.config.retries or {}
        attempts = retries.get("total_max_attempts")
        if attempts is None and "max_attempts" in retries:
            attempts = retries["max_attempts"] + 1
        if attempts != 1:
            return False
        service_id = client.meta.service_model.service_id.hyphenize()
        handlers = self._emitter._handlers
        for op in self.operations.values():
            if not op.plain:
                return False
            for event, allowed in _SKIPPED_EVENTS.items():
                found = handlers.prefix_search(f"{event}.{service_id}.{op.name}")
                if any(handler not in allowed for handler in found):
                    return False
        return True

    def _host(self, url: str) -> str:
        host = self._hosts.get(url)
        if host is None:
            host = _host_from_url(url)
            if len(self._hosts) < MAX_TARGETS:
                self._hosts[url] = host
        return host

    def _standard_one_attempt(self) -> bool:
        service_id = self.client.meta.service_model.service_id.hyphenize()
        for op in self.operations.values():
            found = list(
                self._emitter._handlers.prefix_search(f"needs-retry.{service_id}.{op.name}")
            )
            owner = getattr(found[0], "__self__", None) if len(found) == 1 else None
            if not isinstance(owner, AioRetryHandler) or type(owner) is not AioRetryHandler:
                return False
            if found[0].__name__ != "needs_retry":
                return False
            conditions = owner._retry_policy._retry_checker
            if type(conditions) is not AioStandardRetryConditions:
                return False
            if conditions._max_attempts_checker._max_attempts != 1:
                return False
        return True

    async def call(self, name: str, params: dict[str, Any]) -> Any:
        """`client.<operation>(**params)` the lean way, or the generic way when it must be."""
        if not self.usable():
            return await self.client._make_api_call(name, params)
        async with start_as_current_context():
            return await self._call(self.operations[name], params)

    async def _call(self, op: _Operation, params: dict[str, Any]) -> Any:
        client, model = self.client, op.model
        emitter = client.meta.events
        request_context = {
            "client_region": client.meta.region_name,
            "client_config": client.meta.config,
            "has_streaming_input": model.has_streaming_input,
            "auth_type": model.resolved_auth_type,
            "unsigned_payload": model.unsigned_payload,
            "auth_options": client.meta.service_model.metadata.get("auth"),
        }
        params = await client._emit_api_params(
            api_params=params, operation_model=model, context=request_context
        )
        endpoint_url, headers, properties = await client._resolve_endpoint_ruleset(
            model, params, request_context
        )
        if properties:
            request_context["endpoint_properties"] = properties
        # The hot batch bodies are encoded by `serialise.take_body` already; put back into
        # the request by its `before-call` handler.
        body = b"" if serialise.has_body(request_context) else op.encode(params)
        if body is None:
            request_dict = await client._convert_to_request_dict(
                api_params=params,
                operation_model=model,
                endpoint_url=endpoint_url,
                context=request_context,
                headers=headers,
            )
            resolve_checksum_context(request_dict, model, params)
        else:
            request_dict = op.request_dict(body, endpoint_url, headers, request_context)
            request_dict["headers"]["User-Agent"] = client._user_agent_creator.to_string()

        _, event_response = await emitter.emit_until_response(
            op.before_call,
            model=model,
            params=request_dict,
            request_signer=client._request_signer,
            context=request_context,
        )
        if event_response is not None:
            http, parsed = event_response
        elif body is None or not isinstance(request_dict["body"], bytes):
            maybe_compress_request(client.meta.config, request_dict, model)
            apply_request_checksum(request_dict)
            http, parsed = await client._make_request(model, request_dict, request_context)
        else:
            try:
                http, parsed = await self._send(op, request_dict)
            except Exception as e:
                await emitter.emit(op.after_call_error, exception=e, context=request_context)
                raise

        await emitter.emit(
            op.after_call, http_response=http, parsed=parsed, model=model, context=request_context
        )
        if http.status_code >= 300:
            error_info = parsed.get("Error", {})
            code = request_context.get("error_code_override") or error_info.get("Code")
            raise client.exceptions.from_code(code)(parsed, op.name)
        return parsed

    async def _send(self, op: _Operation, request_dict: dict[str, Any]) -> tuple[Any, Any]:
        """`Endpoint.make_request` for one attempt of a plain request."""
        endpoint, model, emitter = self.client._endpoint, op.model, self.client.meta.events
        context = request_dict["context"]
        endpoint._update_retries_context(context, 1)
        self.sent += 1
        body: bytes = request_dict["body"]
        request = LeanRequest(request_dict, body)
        # The Host header botocore signs and aiohttp sends, computed once per URL by
        # botocore (the signer would parse the URL for it twice per call).
        request.headers["Host"] = self._host(request.url)
        await emitter.emit(op.request_created, request=request, operation_name=op.name)
        headers = request.headers
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:  # as prepared
            request.headers["Content-Length"] = str(len(body))
        caught: Exception | None = None
        http: Any = None
        parsed: Any = None
        try:
            http = await self.transport.send(request)
        except Exception as e:
            caught = e
        if http is not None:
            response_dict = {
                "headers": http.headers,
                "status_code": http.status_code,
                "context": {"operation_name": op.name},
                "body": await http.content,
            }
            parsed = await self.parser.parse(response_dict, model.output_shape)
            if http.status_code >= 300:
                await endpoint._add_modeled_error_fields(response_dict, parsed, model, self.parser)
        await self._needs_retry(op, request_dict, http, parsed, caught)
        if caught is not None:
            raise caught
        if "ResponseMetadata" in parsed:
            parsed["ResponseMetadata"]["RetryAttempts"] = 0
        return http, parsed

    async def _needs_retry(
        self,
        op: _Operation,
        request_dict: dict[str, Any],
        http: Any,
        parsed: Any,
        caught: Exception | None,
    ) -> None:
        """The `needs-retry` of the one attempt: no retry, the retry metadata added."""
        context = request_dict["context"]
        if self._one_attempt:
            # What the standard retry handler of a one-attempt client does on `needs-retry`.
            retries = context.get("retries")
            if retries:
                retries["max"] = max(retries.get("max", 0), 1)
            if parsed is not None:
                parsed.setdefault("ResponseMetadata", {})["MaxAttemptsReached"] = True
        else:
            responses = await self.client.meta.events.emit(
                op.needs_retry,
                response=None if http is None else (http, parsed),
                endpoint=self.client._endpoint,
                operation=op.model,
                attempts=1,
                caught_exception=caught,
                request_dict=request_dict,
            )
            if first_non_none_response(responses) is not None:
                raise RuntimeError(f"{op.name}: a retry was asked of a one-attempt client")


_ATTRIBUTE = "_logpipe_lean"


def install(client: Any) -> LeanCalls:
    """Make the client's hot JSON calls through a `LeanCalls`; every other call is unchanged."""
    lean = LeanCalls(client)
    for name in lean.operations:
        method = LEAN_OPERATIONS[(client.meta.service_model.service_name, name)]
        setattr(client, method, _method(lean, name, method))
    setattr(client, _ATTRIBUTE, lean)
    return lean


def installed(client: Any) -> LeanCalls | None:
    """The client's `LeanCalls`, if `install` gave it one."""
    lean: LeanCalls | None = getattr(client, _ATTRIBUTE, None)
    return lean


def _method(lean: LeanCalls, name: str, method: str) -> Callable[..., Awaitable[Any]]:
    generic = getattr(type(lean.client), method)

    @functools.wraps(generic)
    async def call(*args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError(f"{method}() only accepts keyword arguments.")
        return await lean.call(name, kwargs)

    return call
