"""LOGPIPE_NAIVE and LOGPIPE_FAULTS: the parts a bench or chaos run swaps into the roles.

Production `Settings` knows nothing of them. `logpipe.cli`, the composition root, reads them
here and hands the roles what they select: the naive sender and processor, and the hook
that installs fault injection in the AWS clients.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from logpipe.aws.clients import ClientHook
from logpipe.dev.faults import Faults, Injector
from logpipe.dev.naive import NaiveProcessor, one_per_event
from logpipe.errors import ConfigError

log = logging.getLogger(__name__)

VARIABLES = ("LOGPIPE_NAIVE", "LOGPIPE_FAULTS")


@dataclass(frozen=True)
class Switches:
    """What LOGPIPE_NAIVE (the one-call-per-event pipeline) and LOGPIPE_FAULTS turn on."""

    naive: bool = False
    faults: Faults = field(default_factory=Faults)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Switches:
        """Read both variables; a bad value raises ConfigError naming the variable."""
        try:
            faults = Faults.parse(env.get("LOGPIPE_FAULTS", ""))
        except ConfigError as exc:
            raise ConfigError(f"LOGPIPE_FAULTS: {exc}") from None
        return cls(naive=_flag(env, "LOGPIPE_NAIVE"), faults=faults)

    def client_hook(self) -> ClientHook | None:
        """Installs the in-client faults on a role's AWS clients; None without any."""
        faults = self.faults.in_clients
        if faults == Faults():
            return None

        def install(sqs: Any, dynamodb: Any) -> None:
            log.warning("LOGPIPE_FAULTS is set: injecting %s", faults)
            Injector(faults).install(sqs, dynamodb)

        return install

    def collaborators(self, role: str) -> dict[str, Any]:
        """Keyword arguments for `role`'s `serve` (or `create_app`): only what is switched on."""
        found: dict[str, Any] = {}
        hook = self.client_hook()
        if hook is not None and role in ("ingestor", "processor"):
            found["client_hook"] = hook
        if self.naive and role == "ingestor":
            found["sender"] = one_per_event
        if self.naive and role == "processor":
            found["processor_cls"] = NaiveProcessor
        return found


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0 (true or false), got {raw!r}")
