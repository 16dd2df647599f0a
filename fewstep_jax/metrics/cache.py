"""Where the metrics cache what they compute or download (the digits classifier, the Inception
weights, FID reference statistics)."""

from __future__ import annotations

import os


def default_cache_dir() -> str:
    """Where computed artifacts are cached: $FEWSTEP_CACHE, else ~/.cache/fewstep_jax."""
    return os.environ.get("FEWSTEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fewstep_jax")
