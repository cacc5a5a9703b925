"""Model hub access that fails fast: with no network (or HF_HUB_OFFLINE=1) a hub id not already in the
local cache is refused at once with advice to pass a local folder, instead of retrying for half a minute."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

_REACHABLE: dict[str, bool] = {}


class HubUnavailable(OSError):
    """The hub cannot be reached and the files are not in the local cache."""


def offline_requested() -> bool:
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or \
        os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` seconds (asked once per process;
    name resolution runs in a thread, because it has no timeout of its own)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _REACHABLE:
        parsed = urlparse(endpoint)
        host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme != "http" else 80)
        result = [False]

        def probe() -> None:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                result[0] = True
            except OSError:
                pass

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout)
        _REACHABLE[endpoint] = result[0]
    return _REACHABLE[endpoint]


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def require_hub(repo_id: str, what: str, cached_probe: str | None = None, revision: str | None = None) -> None:
    """Raise HubUnavailable now if `repo_id` would need a download that cannot happen. `cached_probe`: a file
    of the repo whose presence in the cache means no download is needed."""
    if cached_probe is not None and cached_file(repo_id, cached_probe, revision) is not None:
        return
    reason = "HF_HUB_OFFLINE is set" if offline_requested() else None
    if reason is None and not hub_reachable():
        reason = "the Hugging Face hub cannot be reached (no network?)"
    if reason is not None:
        raise HubUnavailable(f"cannot fetch the {what} {repo_id!r}: {reason}, and it is not in the local cache. "
                             f"Download it on a machine with network access and pass its local folder instead.")


def hub_download(repo_id: str, filename: str, what: str, revision: str | None = None) -> Path:
    """One file of a hub repo: from the local cache, else downloaded (failing fast when that cannot work)."""
    cached = cached_file(repo_id, filename, revision)
    if cached is not None:
        return cached
    require_hub(repo_id, what, revision=revision)
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision))
