"""What leaves the process without its secrets: the run's config as logged (`config.yaml`) and
log records, with the passwords of store URLs replaced by `***`."""

from __future__ import annotations

import logging
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf


def config_yaml(cfg: DictConfig, masked: bool = True) -> str:
    """The run's config as logged (`config.yaml`): resolved, except values built from `paths`
    (cache, MLflow and Optuna stores, data files) or read from the environment
    (`${oc.env:...}`, e.g. a database password), which keep their interpolations, so the file
    re-runs elsewhere with `paths.root=...` and never holds the secret:

        python -m pipeline --config-dir DIR --config-name logged paths.root=/tmp/rerun

    (DIR/logged.yaml is the downloaded file; a name other than `config`, which the package's
    own conf/ would shadow.) A password written literally into a URL is replaced by `***`
    (`masked=False`: not, for the copies handed to worker processes, which must connect).
    """
    return OmegaConf.to_yaml(
        _keep_path_interpolations(
            OmegaConf.to_container(cfg, resolve=True),
            OmegaConf.to_container(cfg, resolve=False),
            masked,
        )
    )


def _keep_path_interpolations(resolved: Any, raw: Any, masked: bool = False) -> Any:
    """`resolved`, except values whose raw form refers to `${paths.…}` (cache, MLflow store, data
    files) or `${oc.env:…}`; with `masked`, URL passwords in the other strings become `***`."""
    if isinstance(resolved, dict) and isinstance(raw, dict):
        return {k: _keep_path_interpolations(v, raw.get(k), masked) for k, v in resolved.items()}
    if isinstance(resolved, list) and isinstance(raw, list) and len(resolved) == len(raw):
        return [_keep_path_interpolations(v, r, masked) for v, r in zip(resolved, raw)]
    if isinstance(raw, str) and ("${paths." in raw or "${oc.env:" in raw):
        return mask_secrets(raw) if masked else raw
    return mask_secrets(resolved) if masked and isinstance(resolved, str) else resolved


# scheme://user:PASSWORD@host... (a password cannot hold an unescaped "/" or "@"); a password
# that is an interpolation (`${oc.env:PGPASSWORD}`) is no secret and is kept
_URL_PASSWORD = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?!\$\{)[^@\s/]+(?=@)")
# libpq/SQLAlchemy query form: ...?password=PASSWORD&...
_QUERY_PASSWORD = re.compile(r"(?i)(?P<pre>(?:^|[?&;\s])password=)(?!\$\{)[^&\s;'\"]+")
MASK = "***"


def mask_secrets(text: str) -> str:
    """`text` with the passwords of any URLs in it replaced by `***` (user, host, db kept)."""
    if "://" not in text and "password=" not in text.lower():
        return text
    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)
    return _QUERY_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)


class SecretMaskingFilter(logging.Filter):
    """Masks URL passwords in every record a handler emits (console, Hydra's job log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the handler's to report
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_logs() -> None:
    """Install `SecretMaskingFilter` on the root logger's handlers (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())
