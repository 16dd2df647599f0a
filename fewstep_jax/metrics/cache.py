"""Where the metrics cache what they compute or download (the digits classifier, the Inception
and DINOv2 weights, FID / FD-DINOv2 reference statistics), and the one downloader they share."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.request


def default_cache_dir() -> str:
    """Where computed artifacts are cached: $FEWSTEP_CACHE, else ~/.cache/fewstep_jax."""
    return os.environ.get("FEWSTEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fewstep_jax")


def download(url: str, dest: str) -> None:
    """Download url to dest atomically, with a progress line on stderr (only ever called for a URL
    the user gave)."""
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".", suffix=".part")
    try:
        with urllib.request.urlopen(url) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\rdownloading {url}: {done / 2**20:.1f} / {total / 2**20:.1f} MiB", end="", file=sys.stderr)
        print(file=sys.stderr)
        shutil.move(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def cached_download(url: str, cache_dir: str, default_name: str, prefix: str = "") -> str:
    """The local copy of url in cache_dir, downloaded on first use: named prefix + the URL's file
    name (default_name when the URL has none)."""
    dest = os.path.join(cache_dir, prefix + (os.path.basename(url.split("?")[0]) or default_name))
    if not os.path.exists(dest):
        download(url, dest)
    return dest
