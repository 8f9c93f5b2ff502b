"""The study's storage: Optuna's RDB storage (SQLite in the study directory by default, PostgreSQL for workers on
several machines), opened with time limits, and its URL's secrets kept out of everything genforge prints or writes.

A storage that stops answering stops the study with a StorageError: PostgreSQL connections and statements time out
rather than wait forever. A storage URL may carry a password (user:password@host, or ?password=...): it is shown
through shown_url(), which masks them, and a driver's message through scrubbed()."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import threading
import urllib.parse
import warnings
from pathlib import Path

from genforge.errors import GenforgeError

HEARTBEAT = 10  # seconds between a running trial's heartbeats; a trial silent for 3 of them is failed as stale
# PostgreSQL (libpq) limits, unless the URL's query sets them: a server that does not answer fails the connection after
# CONNECT_TIMEOUT s and a statement after STATEMENT_TIMEOUT s, instead of a worker waiting forever
CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout (the whole start-up: TCP, TLS and authentication)
STATEMENT_TIMEOUT = 60  # seconds, the server's statement_timeout; Optuna's statements take milliseconds
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}  # TCP probes
# after 30 s idle, every 10 s, 3 unanswered: a connection whose server vanished (host down, network cut) dies in ~60 s
SECRET_KEYS = ("pass", "pwd", "secret", "token", "key", "odbc_connect")  # query keys holding one of these carry a
# credential: libpq's password, sslpassword and passfile, MySQL's passwd, ODBC's PWD inside odbc_connect, tokens


class StorageError(GenforgeError):
    """The study's storage could not be opened, or failed mid-study (it stopped answering): the study stops."""


def sqlite_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


# user:password@ of a URL, as SQLAlchemy reads it (the user has no ':' or '/'), to the last '@': a password with an
# unescaped '@' is masked whole, where SQLAlchemy would take its end for the host
_NETLOC_PASSWORD = re.compile(r"^([\w+.-]+://[^:/]*:)(.*)@", re.S)


def shown_url(url: str) -> str:
    """The storage URL with its credentials masked, for everything genforge prints or writes: the password of
    user:password@ and the value of every query key that carries one (SECRET_KEYS). It works on the text, so a URL
    that SQLAlchemy cannot parse is masked as well."""
    masked = _NETLOC_PASSWORD.sub(r"\1***@", url)
    base, mark, query = masked.partition("?")
    return base + mark + "&".join(_masked_pair(pair) for pair in query.split("&")) if mark else masked


def _masked_pair(pair: str) -> str:
    key, equals, _ = pair.partition("=")
    return f"{key}=***" if equals and _secret_key(key) else pair


def _secret_key(key: str) -> bool:
    return any(word in urllib.parse.unquote_plus(key).lower() for word in SECRET_KEYS)


def scrubbed(text: str, url: str) -> str:
    """text (a driver's error message) without the URL's secrets: each in full, and its pieces between the characters
    a parser splits a URL at, which is what a host or port parsed from a password with an unescaped '@' shows."""
    found = [m.group(2) for m in [_NETLOC_PASSWORD.match(url)] if m]
    found += [value for key, value in re.findall(r"[?&]([^=&]*)=([^&]*)", url) if _secret_key(key)]
    pieces = set()
    for secret in found:
        for form in (secret, urllib.parse.unquote(secret), urllib.parse.unquote_plus(secret)):
            pieces.add(form)
            pieces.update(re.split(r"[@:/?&=]", form))
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):  # shorter: too common to mask
        text = text.replace(piece, "***")
    return text


def _reason(e: BaseException, url: str) -> str:
    """An exception as one line without the URL's secrets: the first line of SQLAlchemy's (the rest is its SQL)."""
    return scrubbed(" ".join(str(e).strip().split("\n")[0].split()) or type(e).__name__, url)


def engine_url(url: str) -> str:
    """The URL SQLAlchemy is given: postgresql:// (or postgres://) without a driver names psycopg2 where it is
    installed (the tune extra's driver; SQLAlchemy 2.1 would pick psycopg 3, with which Optuna has had a bug: optuna
    issue 6096), else SQLAlchemy's default driver."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    if importlib.util.find_spec("psycopg") is None:
        raise StorageError("a postgresql:// storage needs psycopg2; install it with: pip install psycopg2-binary "
                           "(or `pip install -e '.[tune]'` in a checkout)")
    return f"postgresql://{rest}"


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):  # wait for the lock rather than fail when workers write at once
        return {"connect_args": {"timeout": 60}}
    from sqlalchemy.engine import make_url  # deferred: SQLAlchemy comes with optuna, the optional `tune` extra

    engine = {"pool_pre_ping": True}  # a pooled connection that died is replaced, not used
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg"):
        limits = {"connect_timeout": CONNECT_TIMEOUT, "options": f"-c statement_timeout={STATEMENT_TIMEOUT * 1000}",
                  **KEEPALIVES}  # libpq's parameters: the URL's own query wins (connect_args would override it)
        engine["connect_args"] = {k: v for k, v in limits.items() if k not in parsed.query}
    return engine


def open_storage(url: str, heartbeat: int = HEARTBEAT):
    """Optuna's RDBStorage on url, trials beating every `heartbeat` s; StorageError's one line where it cannot open."""
    import optuna  # deferred: the optional `tune` extra
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        given = engine_url(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(given, engine_kwargs=_engine_kwargs(given), heartbeat_interval=heartbeat,
                                              grace_period=3 * heartbeat)
    except (SQLAlchemyError, ArgumentError, ImportError, ValueError) as e:
        raise StorageError(f"cannot open the study storage {shown_url(url)}: {_reason(e, url)}") from None


def storage_failure(e: BaseException) -> str | None:
    """Why the storage failed, where it did anywhere in e's chain: Optuna, meeting a storage error while it records
    a trial, may raise another exception (its own, or the next statement's) with the first as its context."""
    from sqlalchemy.exc import SQLAlchemyError  # deferred: SQLAlchemy comes with the optional `tune` extra

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (SQLAlchemyError, StorageError)):
            return str(e) if isinstance(e, StorageError) else " ".join(str(e).strip().split("\n")[0].split())
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def quiet_storage_threads():
    """Optuna's heartbeat thread meets a storage failure too: its traceback would go to stderr, while the main thread
    meets the same failure and says it once. Other exceptions in threads are shown as before."""
    previous = threading.excepthook

    def hook(args):
        if args.exc_value is None or storage_failure(args.exc_value) is None:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
