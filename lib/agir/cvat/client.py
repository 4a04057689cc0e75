"""One CVAT connection: the cvat-sdk client with retries, timeouts, version logging and clear errors.

Reads go through the SDK's endpoint objects with `_parse_response=False` and are decoded as plain
JSON: the SDK's generated models are strict about the newest schema, and servers from 2.23 onwards
add/omit fields between versions, so plain dicts keep every supported server readable.
Writes are built with the SDK's request models, which every supported server accepts.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import urllib3
from cvat_sdk.api_client import exceptions as api_exc
from cvat_sdk.core.client import AccessTokenCredentials, Client, Config, PasswordCredentials
from packaging.version import InvalidVersion, Version

from agir.cvat.credentials import CvatCredentials, SecretFilter
from agir.errors import AgirError
from agir.logs import get_logger

log = get_logger("cvat")

RETRY_STATUSES = (429, 500, 502, 503, 504)
OLDEST_SUPPORTED = Version("2.23")
_SDK_LOGGERS = ("cvat_sdk", "urllib3", "agir")


class CvatHttpError(AgirError):
    """An HTTP error answer from CVAT (after retries); `status` lets callers adapt to older servers."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


def connection_refused(error: BaseException | None) -> bool:
    """True when an error (or what it wraps) is a refused TCP connection: nothing listens at that address."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return True
        # urllib3 keeps the cause in .reason (MaxRetryError) or the exception chain (NewConnectionError)
        todo.extend([getattr(e, "reason", None), e.__cause__, e.__context__])
    return False


class CvatRetry(urllib3.Retry):
    """urllib3 retries, except that a refused connection fails at once.

    A refused connection means a wrong host/port or a stopped server; waiting through the whole backoff
    (tens of seconds) would only delay the error. 5xx, 429, resets and timeouts are still retried.
    """

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if error is not None and connection_refused(error):
            raise urllib3.exceptions.MaxRetryError(_pool, url, error) from error
        return super().increment(method, url, response=response, error=error, _pool=_pool, _stacktrace=_stacktrace)


def make_retry(retries: int, backoff: float) -> urllib3.Retry:
    """Exponential backoff on 5xx/429, connection errors and read timeouts, for every HTTP method.

    Non-idempotent calls are retried too: the upload is made idempotent one level up (tasks are found
    by name, annotations replaced with PUT), so a repeated POST cannot leave duplicates behind.
    A refused connection is not retried (see CvatRetry).
    """
    return CvatRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=None,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff,
        backoff_max=30,
        raise_on_status=False,
        respect_retry_after_header=True,
    )


class CvatSession:
    """A logged-in CVAT client plus helpers; use as a context manager or call `close()`."""

    def __init__(
        self,
        creds: CvatCredentials,
        *,
        timeout: float = 60,
        retries: int = 5,
        backoff: float = 0.5,
        poll_seconds: float = 1.0,
    ):
        self.creds = creds
        self.host = creds.host
        self.timeout = float(timeout)
        self.poll_seconds = poll_seconds
        self._filter = SecretFilter(creds.secrets())
        # logger filters do not see records propagated from child loggers, handler filters do
        self._filtered = [logging.getLogger(n) for n in _SDK_LOGGERS]
        for name in ("", "agir"):
            self._filtered.extend(logging.getLogger(name).handlers)
        for target in self._filtered:
            target.addFilter(self._filter)
        self.client = Client(
            self.host,
            logger=get_logger("cvat.sdk"),
            config=Config(status_check_period=poll_seconds, allow_unsupported_server=True),
            # the SDK's own check warns or fails for every server older than itself; we log instead
            check_server_version=False,
        )
        pool = self.client.api_client.rest_client.pool_manager
        pool.connection_pool_kw["retries"] = make_retry(retries, backoff)
        pool.connection_pool_kw["timeout"] = urllib3.Timeout(connect=min(self.timeout, 30), read=self.timeout)
        pool.clear()
        self.http_seconds = 0.0
        self.requests = 0
        try:
            self.server_version = self._server_version()
            self._login()
        except BaseException:
            self.close()
            raise
        if creds.organization:
            self.client.organization_slug = creds.organization

    # ------------------------------------------------------------------ setup
    def _server_version(self) -> str:
        about = self.call("fetch the server version", self.client.api_client.server_api.retrieve_about)
        version = str(about.get("version", "unknown"))
        try:
            parsed = Version(version)
        except InvalidVersion:
            parsed = None
        if parsed is not None and parsed < OLDEST_SUPPORTED:
            log.warning("CVAT server %s is %s, older than %s; some calls may fail", self.host, version, OLDEST_SUPPORTED)
        else:
            log.info("CVAT server %s version %s", self.host, version)
        return version

    def _login(self) -> None:
        creds = self.creds
        what = f"log in to {self.host} as {creds.username or 'token'} (credentials from {creds.source or 'unknown'})"
        try:
            if creds.access_token:
                self.client.login(AccessTokenCredentials(creds.access_token))
                # a token login sends nothing; check it now so a bad token fails here, clearly
                self.call(what, self.client.api_client.users_api.retrieve_self)
            else:
                self._timed(lambda: self.client.login(PasswordCredentials(creds.username or "", creds.password or "")))
        except AgirError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to one clear line
            raise self._error(what, exc) from None

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            for target in self._filtered:
                target.removeFilter(self._filter)

    def __enter__(self) -> CvatSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ calls
    def scrub(self, text: str) -> str:
        return self._filter.scrub(text)

    def _timed(self, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.http_seconds += time.perf_counter() - t0
            self.requests += 1

    def _error(self, what: str, exc: BaseException) -> AgirError:
        """One line: what failed, on which host, what to check. Never the response headers (cookies)."""
        if isinstance(exc, api_exc.ApiException):
            status = exc.status
            body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
            body = " ".join(self.scrub(body).split())[:200]
            if status in (401, 403):
                hint = "check the username/password or token and the organization"
            elif status == 404:
                hint = "check the id exists on this server and that you can see it"
            elif status and status >= 500:
                hint = "the server kept failing after retries; check its health and retry later"
            else:
                hint = "check the request settings"
            return CvatHttpError(
                f"CVAT {self.host}: could not {what}: HTTP {status} {exc.reason or ''} {body}; {hint}".strip(), status
            )
        if connection_refused(exc):
            return AgirError(
                f"CVAT {self.host}: could not {what}: connection refused (nothing listens there); check the host "
                "URL and port (CVAT_HOST / cvat.host) and that the server is running"
            )
        if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            return AgirError(
                f"CVAT {self.host}: could not {what}: {type(exc).__name__}; check the host URL, network/VPN "
                f"and that the server is running (cvat.timeout_seconds={self.timeout:g})"
            )
        return AgirError(f"CVAT {self.host}: could not {what}: {self.scrub(str(exc))[:200]}")

    def call(self, what: str, endpoint: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call an SDK API method and return its JSON body (dict/list) or raw bytes for non-JSON."""
        kwargs.setdefault("_parse_response", False)
        try:
            _, resp = self._timed(lambda: endpoint(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001
            raise self._error(what, exc) from None
        data = resp.data
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if not data:
            return None
        if "json" in ctype:
            return json.loads(data)
        return data

    def list_all(self, what: str, endpoint: Callable, **params: Any) -> list[dict]:
        """All pages of a paginated list endpoint as dicts."""
        out: list[dict] = []
        page = 1
        while True:
            body = self.call(what, endpoint, page=page, page_size=100, **params)
            out.extend(body.get("results", []))
            if not body.get("next"):
                return out
            page += 1

    def wait_request(self, rq_id: str, what: str, timeout: float = 3600) -> dict:
        """Poll /api/requests/{rq_id} until finished; a failed request becomes a clear error."""
        delay = min(0.05, self.poll_seconds)
        deadline = time.monotonic() + timeout
        while True:
            req = self.call(f"poll the {what} request", self.client.api_client.requests_api.retrieve, rq_id)
            status = str(req.get("status", "")).lower()
            if status == "finished":
                return req
            if status == "failed":
                raise AgirError(f"CVAT {self.host}: {what} failed on the server: {self.scrub(str(req.get('message')))[:300]}")
            if time.monotonic() > deadline:
                raise AgirError(f"CVAT {self.host}: {what} still {status} after {timeout:.0f}s; check the server's workers")
            time.sleep(delay)
            delay = min(delay * 1.6, self.poll_seconds)

    @property
    def api(self):
        return self.client.api_client

    def task_url(self, task_id: int) -> str:
        return f"{self.host}/tasks/{task_id}"


def session_from_config(cfg: Mapping[str, Any], creds: CvatCredentials | None = None, **overrides: Any) -> CvatSession:
    from agir.cvat.credentials import load_credentials

    ccfg = cfg.get("cvat") or {}
    creds = creds or load_credentials(cfg)
    return CvatSession(
        creds,
        timeout=float(ccfg.get("timeout_seconds", 60)),
        retries=int(ccfg.get("retries", 5)),
        backoff=float(ccfg.get("backoff_seconds", 0.5)),
        poll_seconds=float(overrides.get("poll_seconds", ccfg.get("poll_seconds", 1.0))),
    )


@contextmanager
def open_session(cfg: Mapping[str, Any], **overrides: Any) -> Iterator[CvatSession]:
    session = session_from_config(cfg, **overrides)
    try:
        yield session
    finally:
        session.close()
