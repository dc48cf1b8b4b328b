"""Secret redaction: values a recipe takes from secret-looking environment variables never reach YAML or messages."""

from __future__ import annotations

import os
import re
from typing import Any

#: A secret-looking environment variable or key: a whole ``_``/``-``-separated word such as ``HF_TOKEN``,
#: ``WANDB_API_KEY``, ``hub_token`` or ``use_auth_token`` (not ``max_new_tokens`` or ``tokenizer``).
_SECRET_RE = re.compile(
    r"(?:^|[_\-])(?:token|secret|password|passwd|passphrase|api[_\-]?key|access[_\-]?key|private[_\-]?key|auth|"
    r"credentials?)(?:$|[_\-])",
    re.IGNORECASE,
)
_ENV_RE = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")
_MIN_SECRET_LEN = 6  # shorter values are only redacted where they were interpolated, not searched for elsewhere


def is_secret_name(name: str) -> bool:
    """True when ``name`` (an environment variable or a recipe key) looks like it holds a secret."""
    return bool(_SECRET_RE.search(name))


def secret_env_values(raw: Any, key: str = "", out: dict[str, str] | None = None) -> dict[str, str]:
    """Current values of the secret environment variables ``raw`` interpolates: value -> variable name.

    ``raw`` is a recipe as plain, unresolved data. A variable is secret when its name looks like one
    (``HF_TOKEN``) or it sits under a secret-looking key.
    """
    out = {} if out is None else out
    if isinstance(raw, dict):
        for k, v in raw.items():
            secret_env_values(v, str(k), out)
    elif isinstance(raw, list):
        for v in raw:
            secret_env_values(v, key, out)
    elif isinstance(raw, str):
        for var in _ENV_RE.findall(raw):
            value = os.environ.get(var)
            if value and (is_secret_name(var) or is_secret_name(key)):
                out[value] = var
    return out


def scrub(text: str, secrets: dict[str, str]) -> str:
    """``text`` with every secret of ``secrets`` (value -> variable, from
    [secret_env_values][pvit.secrets.secret_env_values]) replaced by ``<redacted: from $VAR>``.

    Values shorter than 6 characters are left alone: searched for everywhere, they would redact ordinary text.
    """
    for value, var in sorted(secrets.items(), key=lambda kv: -len(kv[0])):
        if len(value) >= _MIN_SECRET_LEN:
            text = text.replace(value, f"<redacted: from ${var}>")
    return text


def redact(raw: Any, data: Any) -> Any:
    """``data`` (a recipe as plain data, resolved or not) with its secrets redacted; ``raw`` is the same recipe
    unresolved, which tells where each value came from.

    A value interpolated from a secret-looking environment variable (``${oc.env:HF_TOKEN}``) or under a
    secret-looking key (``hub_token: ${...}``) becomes ``<redacted: from $VAR>``, and so does any other string
    that contains such a secret (``run_dir: runs/${paths.token}``). Other environment values (data paths) stay.
    """
    return _redact(raw, data, "", secret_env_values(raw))


def _redact(r: Any, d: Any, key: str, secrets: dict[str, str]) -> Any:
    if isinstance(r, dict) and isinstance(d, dict):
        return {k: _redact(r.get(k), v, str(k), secrets) for k, v in d.items()}
    if isinstance(r, list) and isinstance(d, list):
        return [_redact(a, b, key, secrets) for a, b in zip(r, d)]
    if isinstance(r, str) and "${" in r and d != r:
        env = _ENV_RE.findall(r)
        secret_vars = [v for v in env if is_secret_name(v)]
        if secret_vars or is_secret_name(key):
            var = (secret_vars or env or [None])[0]
            return f"<redacted: from ${var}>" if var else "<redacted>"
    if isinstance(d, str):
        scrubbed = scrub(d, secrets)
        if scrubbed != d:
            return scrubbed
    return d
