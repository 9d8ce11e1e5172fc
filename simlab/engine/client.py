"""JSON and server-sent events over HTTP(S), with retries, timeouts and one-line errors (stdlib only)."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from simlab.errors import RemoteError

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class Client:
    """JSON over HTTP(S) with retries, timeouts and one-line errors (stdlib only)."""

    def __init__(self, config):
        url = urllib.parse.urlsplit(config.base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RemoteError(
                f"--base-url {config.base_url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1"
            )
        self.config = config
        self.url = url
        self.prefix = url.path if url.path.endswith("/v1") else url.path + "/v1"
        self.where = config.base_url

    def _connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        return kind(self.url.hostname, self.url.port, timeout=self.config.timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def open(self, method: str, path: str, body: dict | None = None) -> http.client.HTTPResponse:
        """The response of a successful request (status < 400), after retrying transient failures."""
        data = json.dumps(body).encode() if body is not None else None
        delay = 0.5
        for attempt in range(self.config.retries + 1):
            last = attempt == self.config.retries
            connection = self._connection()
            try:
                connection.request(method, self.prefix + path, body=data, headers=self._headers())
                response = connection.getresponse()
            except (ConnectionRefusedError, ConnectionResetError, socket.gaierror) as exc:
                connection.close()
                if last:
                    if isinstance(exc, socket.gaierror):
                        reason = f"unknown host {self.url.hostname!r}"
                    else:
                        reason = exc.strerror or type(exc).__name__
                    raise RemoteError(
                        f"cannot reach the server at {self.where} ({reason}, "
                        f"{attempt + 1} attempts); is it running?"
                    ) from None
            except TimeoutError:
                connection.close()
                raise RemoteError(
                    f"the server at {self.where} did not answer within {self.config.timeout:.0f} s; "
                    "is it overloaded, or is the model still loading?"
                ) from None
            except OSError as exc:
                connection.close()
                raise RemoteError(f"cannot talk to the server at {self.where}: {exc}") from None
            else:
                if response.status < 400:
                    return response
                detail = error_detail(response.read(4096))
                connection.close()
                if response.status not in RETRY_STATUS or last:
                    raise RemoteError(
                        f"the server at {self.where} answered HTTP {response.status}"
                        f"{': ' + detail if detail else ''}{hint(response.status)}"
                    )
            time.sleep(delay * (1 + random.random() / 2))
            delay *= 2
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        response = self.open("GET", path)
        return parse_json(response.read(), self.where)

    def post_json(self, path: str, body: dict) -> Any:
        response = self.open("POST", path, body)
        try:
            raw = response.read()
        except TimeoutError:
            raise RemoteError(
                f"the server at {self.where} stopped answering for {self.config.timeout:.0f} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(f"the answer from {self.where} was cut off ({exc})") from None
        return parse_json(raw, self.where)


def hint(status: int) -> str:
    return {
        401: " (set the key in the variable --api-key-env names)",
        403: " (is the API key right?)",
        404: " (is --base-url the /v1 root, and --model a model the server serves?)",
    }.get(status, "")


def error_detail(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return " ".join(raw.decode("utf-8", "replace").split())[:200]
    error = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message", error)
    return " ".join(str(error).split())[:200]


def parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise RemoteError(
            f"the server at {where} answered something that is not JSON "
            f"({raw[:60]!r}); is it an OpenAI-compatible server?"
        ) from None


def sse_events(response, where: str) -> Iterator[dict]:
    """The JSON events of a server-sent event stream, until [DONE]."""
    while True:
        try:
            raw = response.readline()
        except TimeoutError:
            raise RemoteError(f"the server at {where} went silent mid-reply") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(f"the stream from {where} was cut ({type(exc).__name__})") from None
        if not raw:
            return
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError:
            raise RemoteError(
                f"the server at {where} sent a stream event that is not JSON ({payload[:60]!r})"
            ) from None
        if isinstance(event, dict):
            yield event
