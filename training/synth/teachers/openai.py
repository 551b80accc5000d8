"""The OpenAI-compatible teacher: any server that speaks `POST /v1/chat/completions` (vLLM,
llama-server, llama-cpp-python's server, a hosted API).

    --teacher openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct           # sees images
    --teacher openai:http://127.0.0.1:8080/v1#smollm2@captions                       # text-only

Spec: `openai:URL#MODEL[@captions]`. Requests go to `URL/chat/completions` with `model`,
`messages`, `max_tokens`, `temperature` and `seed` from the synth config. Without `@captions` each
image part becomes an OpenAI `image_url` part holding the item's image as a data URL (mime from the
decoded format); with `@captions` the server is text-only and every image part is replaced by the
problem's caption (`casseat_edge.preprocess.to_text_only`). Messages without an image are sent as
plain strings, which every server's chat template accepts.

Standard library only. `concurrency` requests are in flight at once; each has `timeout_s` and is
retried `retries` times with exponential backoff and jitter on connection errors, timeouts, HTTP
429 and 5xx. Other 4xx answers are not retried. The key comes from `$OPENAI_API_KEY` when set. The
client talks only to the URL given: environment proxies are ignored, redirects are not followed
(urllib would resend the key to wherever one points: another host, or plain http) and nothing is
bound. A server that stays unreachable, redirects, or answers 401/403/404 (wrong URL, key or
model), ends the run: every later request would fail the same way.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image

from casseat_edge.errors import CasseatError, ConfigError, DataError
from casseat_edge.preprocess import load_image, to_text_only
from casseat_edge.registry import TEACHERS
from training.synth.teachers.base import ChatTeacher, Generation, SynthItem, TeacherOutput

CAPTIONS_SUFFIX = "@captions"
RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx
FATAL_STATUSES = frozenset({401, 403, 404})  # wrong key, URL or model: no later request can succeed
PASSTHROUGH_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_BACKOFF_S = 30.0


class OpenAIRequestError(CasseatError):
    """The server refused a request or answered something that is not a chat completion."""


class OpenAIUnreachableError(OpenAIRequestError):
    """No connection to the server after every retry."""


class _Retryable(Exception):
    """One failed attempt that may succeed later (connection error, timeout, 429, 5xx).
    `connection`: no connection at all, as opposed to a slow or overloaded server."""

    def __init__(
        self, what: str, retry_after: float | None = None, connection: bool = False
    ) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after
        self.connection = connection


def _safe_for_secrets(url: str) -> bool:
    """https anywhere, or http to this machine only."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.scheme == "https" or parsed.hostname in ("127.0.0.1", "localhost", "::1")


def parse_spec(argument: str) -> tuple[str, str, bool]:
    """`URL#MODEL[@captions]` -> (base URL without trailing slash, model, sees_images)."""
    url, sep, model = argument.rpartition("#")
    sees_images = not model.endswith(CAPTIONS_SUFFIX)
    if not sees_images:
        model = model[: -len(CAPTIONS_SUFFIX)]
    parsed = urllib.parse.urlparse(url)
    if not sep or not model or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"teacher 'openai:{argument}': expected openai:URL#MODEL[{CAPTIONS_SUFFIX}], "
            "e.g. openai:http://127.0.0.1:8000/v1#smollm2@captions"
        )
    return url.rstrip("/"), model, sees_images


@TEACHERS.register("openai")
class OpenAITeacher(ChatTeacher):
    """A model behind an OpenAI-compatible chat-completions server (vLLM, llama-server, ...)."""

    prefix = "openai"
    spec_help = f"openai:URL#MODEL (append {CAPTIONS_SUFFIX} for a text-only server)"
    backoff_s = 0.5  # first retry delay; doubles per retry, plus up to as much again of jitter

    def __init__(self, spec: str, argument: str, config: Any) -> None:
        super().__init__(spec, argument, config)
        self.base_url, self.model, self.sees_images = parse_spec(argument)
        self.endpoint = f"{self.base_url}/chat/completions"
        self.batch_size = 2 * config.concurrency  # stage 1 of a batch keeps every worker busy
        self._api_key = os.environ.get("OPENAI_API_KEY") or None
        if self._api_key and not _safe_for_secrets(self.base_url):
            raise ConfigError(
                f"openai teacher: refusing to send $OPENAI_API_KEY over plain http to {self.base_url}; "
                "use https, a loopback address, or unset the key"
            )
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
        self._fatal: OpenAIRequestError | None = None

    def run(self, items: list[SynthItem], mode: str) -> Iterator[TeacherOutput]:
        """The shared cascade, ended by an error that every later request would repeat."""
        for output in super().run(items, mode):
            if self._fatal is not None:
                raise self._fatal
            yield output

    def generate(
        self, conversations: list[list[dict[str, Any]]], items: list[SynthItem]
    ) -> list[Generation]:
        if self._fatal is not None:
            raise self._fatal
        images: dict[Path, str] = {}  # stage 2 resends stage 1's image: encode it once per call
        payloads = [self._payload(c, i, images) for c, i in zip(conversations, items, strict=True)]
        workers = max(1, min(self.config.concurrency, len(payloads)))
        with ThreadPoolExecutor(workers, thread_name_prefix="openai-teacher") as pool:
            return list(pool.map(self._complete, payloads))

    def _payload(
        self, conversation: list[dict[str, Any]], item: SynthItem, images: dict[Path, str]
    ) -> dict[str, Any]:
        if self.sees_images:
            messages = [openai_message(m, item, images) for m in conversation]
        else:
            messages = to_text_only(conversation, item.caption)
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.config.max_new_tokens,
            "temperature": self.config.temperature,
            "seed": self.config.seed,
        }

    def _complete(self, payload: dict[str, Any]) -> Generation:
        """One request with retries; the reply and its token counts."""
        start = time.perf_counter()
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            if self._fatal is not None:
                raise self._fatal
            try:
                body = self._post(payload)
                break
            except _Retryable as failure:
                if attempt + 1 == attempts:
                    raise self._give_up(failure, attempts) from None
                time.sleep(self._delay(attempt, failure.retry_after))
        return _generation(body, self.endpoint, time.perf_counter() - start)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.endpoint, json.dumps(payload).encode(), headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            self._raise_for_status(exc)
        except TimeoutError:
            raise _Retryable(f"no answer within {self.config.timeout_s:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"no answer within {self.config.timeout_s:g} s") from None
            raise _Retryable(f"cannot connect ({_reason(exc.reason)})", connection=True) from None
        except (http.client.HTTPException, ConnectionError) as exc:
            raise _Retryable(f"connection lost ({_reason(exc)})", connection=True) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise OpenAIRequestError(
                f"openai teacher: {self.endpoint} answered with something that is not JSON "
                f"({raw[:80]!r}); is URL the /v1 base of an OpenAI-compatible server?"
            ) from None

    def _raise_for_status(self, exc: urllib.error.HTTPError) -> NoReturn:
        if 300 <= exc.code < 400:
            self._fatal = OpenAIRequestError(
                f"openai teacher: {self.endpoint} answered HTTP {exc.code}, a redirect to "
                f"{_location(exc)}; redirects are not followed (they would carry the API key "
                "along): put the URL the server redirects to in the teacher spec"
            )
            raise self._fatal from None
        message = _server_message(exc)
        if exc.code in RETRY_STATUSES or exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code}: {message}", _retry_after(exc)) from None
        error = OpenAIRequestError(
            f"openai teacher: {self.endpoint} answered HTTP {exc.code}: {message}; "
            "check the model name, the API key ($OPENAI_API_KEY) and the request limits"
        )
        if exc.code in FATAL_STATUSES:
            self._fatal = error
        raise error from None

    def _give_up(self, failure: _Retryable, attempts: int) -> OpenAIRequestError:
        if failure.connection:
            self._fatal = OpenAIUnreachableError(
                f"openai teacher: {failure.what} to {self.endpoint} after {attempts} attempts; "
                "is the server running? start it or fix the URL in the teacher spec"
            )
            return self._fatal
        return OpenAIRequestError(
            f"openai teacher: {self.endpoint}: {failure.what} after {attempts} attempts; "
            "see the server's log, or raise --timeout-s / --retries, or lower --concurrency"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2**attempt)
        delay += random.uniform(0, delay)  # jitter: workers that failed together retry apart
        return max(delay, min(retry_after or 0.0, MAX_BACKOFF_S))


def openai_message(
    message: dict[str, Any], item: SynthItem, images: dict[Path, str]
) -> dict[str, Any]:
    """An HF content-list message in the OpenAI format: string content unless it has an image."""
    content = message["content"]
    if isinstance(content, str) or not any(p["type"] == "image" for p in content):
        text = (
            content
            if isinstance(content, str)
            else "".join(p["text"] for p in content if p["type"] == "text")
        )
        return {**message, "content": text}
    parts = []
    for part in content:
        if part["type"] == "image":
            url = {"url": _image_data_url(item, images)}
            parts.append({"type": "image_url", "image_url": url})
        elif part["type"] == "text":
            parts.append({"type": "text", "text": part["text"]})
    return {**message, "content": parts}


def _image_data_url(item: SynthItem, cache: dict[Path, str]) -> str:
    if item.image_path is None:
        raise DataError(
            f"{item.pid}: the conversation has an image part but the problem has no image"
        )
    path = Path(item.image_path)
    if path not in cache:
        cache[path] = _encode_image(path)
    return cache[path]


def _encode_image(path: Path) -> str:
    """The file's own bytes when the server can take them as they are, else a PNG of load_image."""
    image = load_image(path)  # validates, decodes and downscales through the one preprocessing path
    with Image.open(path) as original:
        mime = PASSTHROUGH_FORMATS.get(original.format or "")
        unchanged = original.size == image.size
    if mime and unchanged:
        data = path.read_bytes()
    else:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        mime, data = "image/png", buffer.getvalue()
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _generation(body: dict[str, Any], endpoint: str, seconds: float) -> Generation:
    try:
        text = body["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise OpenAIRequestError(
            f"openai teacher: {endpoint} answered without choices[0].message "
            f"({json.dumps(body)[:120]}); expected an OpenAI chat completion"
        ) from None
    usage = body.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return Generation(
        text=text,
        prompt_tokens=prompt,
        new_prefill_tokens=max(0, prompt - cached),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        seconds=seconds,
    )


def _server_message(exc: urllib.error.HTTPError) -> str:
    """The server's own error text, on one line: OpenAI `error.message`, FastAPI `detail`, or raw."""
    try:
        raw = exc.read().decode("utf-8", "replace")
    except OSError:
        raw = ""
    try:
        body = json.loads(raw)
        error = body.get("error", body.get("detail", raw)) if isinstance(body, dict) else raw
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = raw
    text = " ".join(str(message).split()) or exc.reason or "no message"
    return text[:300]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: the 3xx answer comes back as an `HTTPError` (`_raise_for_status`)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        return None


def _location(exc: urllib.error.HTTPError) -> str:
    location = " ".join(str(exc.headers.get("Location") or "").split())
    return location[:200] or "an unnamed location"


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    try:
        return float(exc.headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None


def _reason(reason: object) -> str:
    return str(reason).splitlines()[0][:120] if str(reason) else reason.__class__.__name__
