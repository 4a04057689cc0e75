"""CVAT connection settings and secrets: environment first, then config, then the keys file.

Secrets (password, access token) live only in a `CvatCredentials` object: they are excluded from its
repr, scrubbed from log records by `SecretFilter` and never written to receipts or metrics.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agir.errors import AgirError
from agir.logs import get_logger
from agir.runs import read_yaml

log = get_logger("cvat")

ENV_HOST = "CVAT_HOST"
ENV_USERNAME = "CVAT_USERNAME"
ENV_PASSWORD = "CVAT_PASSWORD"
ENV_TOKEN = "CVAT_ACCESS_TOKEN"
ENV_ORG = "CVAT_ORG"


@dataclass(frozen=True)
class CvatCredentials:
    host: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    organization: str | None = None
    source: str = ""  # where the secret came from, for error messages (never the secret itself)

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.access_token) if s]


def _read_keys_file(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by group/others (mode %o); run: chmod 600 %s", path, mode & 0o777, path)
        data = read_yaml(path) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise AgirError(f"{path}: cannot read the CVAT keys file ({type(exc).__name__}); fix its YAML") from None
    if not isinstance(data, Mapping):
        raise AgirError(f"{path}: expected a mapping with a 'cvat:' section (host, username, password)")
    section = data.get("cvat", data)
    if not isinstance(section, Mapping):
        raise AgirError(f"{path}: 'cvat' must be a mapping of host, username, password or access_token")
    return dict(section)


def load_credentials(cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> CvatCredentials:
    """Resolve host, organization and secrets: environment, then `cvat.*` config, then `cvat.keys_file`."""
    env = os.environ if env is None else env
    ccfg = cfg.get("cvat") or {}
    keys_path = Path(ccfg.get("keys_file") or ".keys/default.yaml")
    keys = _read_keys_file(keys_path)

    def pick(env_key: str, cfg_key: str | None, key: str) -> tuple[str | None, str]:
        if env.get(env_key):
            return env[env_key], f"${env_key}"
        if cfg_key and ccfg.get(cfg_key):
            return str(ccfg[cfg_key]), f"cvat.{cfg_key}"
        if keys.get(key):
            return str(keys[key]), str(keys_path)
        return None, ""

    host, _ = pick(ENV_HOST, "host", "host")
    if not host:
        raise AgirError(
            f"no CVAT host: set {ENV_HOST}, cvat.host or 'host' in {keys_path} (see docs/cvat.md)"
        )
    org, _ = pick(ENV_ORG, "organization", "organization")
    token, token_src = pick(ENV_TOKEN, None, "access_token")
    user, user_src = pick(ENV_USERNAME, None, "username")
    password, pw_src = pick(ENV_PASSWORD, None, "password")
    if not token and not (user and password):
        raise AgirError(
            f"no CVAT credentials for {host}: set {ENV_USERNAME}/{ENV_PASSWORD} or {ENV_TOKEN}, "
            f"or username/password or access_token in {keys_path} (see docs/cvat.md)"
        )
    if "://" not in host:
        host = "http://" + host
    return CvatCredentials(
        host=host.rstrip("/"),
        username=user,
        password=password if not token else None,
        access_token=token,
        organization=org,
        source=token_src if token else (pw_src or user_src),
    )


class SecretFilter(logging.Filter):
    """Replace secret strings in every log record that passes through a handler or logger."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        clean = self.scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True
