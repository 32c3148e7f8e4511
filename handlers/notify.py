"""`notify`: raise an alert as a structured log line and, if set up, a webhook.

The webhook body is Slack-compatible (`text` plus `blocks`). Webhooks go only
to hosts the configuration allows, because rule files are edited by people
who should not be able to make the engine call arbitrary addresses.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field

from engine.errors import ConfigurationError, HandlerError, TransientHandlerError
from handlers.base import ActionRequest, Handler, HandlerContext

__all__ = ["NotifyHandler", "slack_payload"]

log = structlog.get_logger(__name__)


class NotifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Literal["info", "warning", "critical"]
    title: str = Field(min_length=1)
    message: str = ""
    recommended_actions: list[str] = Field(default_factory=list)


def slack_payload(request: ActionRequest, params: NotifyParams) -> dict[str, Any]:
    """Build a Slack-compatible message for an alert."""
    icon = {"info": ":information_source:", "warning": ":warning:"}.get(
        params.severity, ":rotating_light:"
    )
    lines = [f"{icon} *{params.title}*", params.message]
    if params.recommended_actions:
        label = "Urgent actions" if params.severity == "critical" else "Recommended"
        lines.append(f"{label}: " + "; ".join(params.recommended_actions))
    text = "\n".join(line for line in lines if line)
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "metadata": {
            "event_type": "rules_engine_alert",
            "event_payload": {"rule": request.rule, "action_id": request.id},
        },
    }


class NotifyHandler(Handler):
    """Log an alert, and post it to a webhook when one is configured."""

    name: ClassVar[str] = "notify"
    Params = NotifyParams

    def __init__(
        self,
        webhook_url: str | None = None,
        allowed_hosts: list[str] | None = None,
        timeout_seconds: float = 5.0,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        client: httpx.Client | None = None,
    ) -> None:
        if webhook_url is not None:
            host = urlsplit(webhook_url).hostname or ""
            if host not in (allowed_hosts or []):
                raise ConfigurationError(
                    f"The notify webhook host {host!r} is not in allowed_hosts; "
                    "add it there to let the engine call it."
                )
        self._url = webhook_url
        self._retries = retries
        self._backoff = backoff_seconds
        self._client = client or (
            httpx.Client(timeout=timeout_seconds) if webhook_url else None
        )

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        """Log the alert and deliver it to the webhook, retrying with backoff."""
        # Raising an alert is the handler working as intended, so it logs at
        # info; warning is for an action that failed.
        log.info(
            "alert raised",
            rule=request.rule,
            action_id=request.id,
            # Not `severity`: that key is the log line's own level for Cloud
            # Logging, set by the logging setup.
            alert_severity=params.severity,
            title=params.title,
            recommended_actions=params.recommended_actions,
        )
        if self._url is None or self._client is None:
            return {"delivered": "log"}

        payload = slack_payload(request, params)
        last_error = ""
        for attempt in range(1, self._retries + 1):
            try:
                response = self._client.post(
                    self._url, json=payload, headers={"Idempotency-Key": request.id}
                )
                if response.status_code < 500 and response.status_code != 429:
                    response.raise_for_status()
                    return {"delivered": "webhook", "status": response.status_code}
                last_error = f"HTTP {response.status_code}"
            except httpx.HTTPStatusError as error:
                raise HandlerError(
                    f"The webhook refused the alert with HTTP "
                    f"{error.response.status_code}."
                ) from error
            except httpx.HTTPError as error:
                last_error = str(error) or type(error).__name__
            if attempt < self._retries:
                time.sleep(self._backoff * 2 ** (attempt - 1))
        raise TransientHandlerError(
            f"The webhook did not take the alert after {self._retries} attempts: "
            f"{last_error}."
        )

    def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            self._client.close()
