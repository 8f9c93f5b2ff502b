"""Fetch a file from a list of mirrors: stream to a temp file, verify md5, then rename into place."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

TIMEOUT_S = 30  # per connect/read: a dead mirror fails fast and the next one is tried
CHUNK = 1 << 16


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _stream(url: str, out, progress: bool) -> None:
    """Copy url into the open file out, with a progress bar on stderr when asked."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task(url.rsplit("/", 1)[-1], total=total)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.advance(task, len(chunk))


def download(filename: str, mirrors: list[str], md5: str | None, folder: Path,
             progress: bool) -> tuple[Path | None, str, list[str]]:
    """Try mirror + filename for each mirror in order until one gives a file with the right md5.

    Returns (path, mirror, []) on success, else (None, "", one reason per mirror). Only a verified file ever
    appears under its final name; the temp file is removed on every failure, Ctrl-C included."""
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _stream(url, out, progress)
            got = md5_file(tmp)
            if md5 is not None and got != md5:
                failures.append(f"{url}: md5 {got} != expected {md5}")
                continue
            final = folder / filename
            os.replace(tmp, final)
            return final, mirror, []
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, HTTPError, timeouts
            plain = isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
            reason = e.reason if plain else e
            failures.append(f"{url}: {reason}")
        finally:
            tmp.unlink(missing_ok=True)  # no-op after os.replace; cleans up after errors and Ctrl-C
    return None, "", failures
