"""Reaching the Hugging Face hub: offline, loaders read only the local cache and fail at once."""
from __future__ import annotations

import socket
from urllib.parse import urlparse


def hub_resolvable() -> bool:
    """Whether the hub endpoint's host name resolves. Offline, a hub download retries for about 25 s before it
    fails; callers then pass ``local_files_only=True``, which fails at once with their own advice."""
    from huggingface_hub import constants

    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True
