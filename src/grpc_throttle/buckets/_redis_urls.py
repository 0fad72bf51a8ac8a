"""Redis URLs a bucket's ``from_url`` reads: redis-py's, valkey-py's, and Sentinel deployments.

Pure parsing, apart from building the client the URL names. A Sentinel
deployment is spelled as the ``limits`` library spells it:
``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from ._redis_clients import library_kit, redis_kit
from ._redis_config import redact_url

__all__ = ["SENTINEL_SCHEMES", "client_from_url", "parse_sentinel_url"]

#: URL schemes of a Sentinel deployment (as the ``limits`` library spells them).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``, as ``limits`` reads it.

    The credentials go to the sentinels and to the master alike;
    ``rediss+sentinel://`` connects to both over TLS.

    Returns:
        The sentinels' addresses, the service name, and the connection settings.

    Raises:
        ValueError: the URL is malformed (the message hides any password).
    """
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://, got {shown!r}")
    hosts = parts.netloc.rpartition("@")[2]
    addresses = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid Sentinel URL {shown!r}: each sentinel must be host:port, got {item!r}")
        addresses.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"invalid Sentinel URL {shown!r}: the path must be /service_name or /service_name/db")
    kwargs: dict[str, Any] = {}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if parts.scheme == "rediss+sentinel":
        kwargs["ssl"] = True
    if len(path) == 2:
        kwargs["db"] = int(path[1])
    return addresses, unquote(path[0]), kwargs


def client_from_url(url: object, *, asyncio: bool) -> tuple[Any, str | None]:
    """The client a URL names, and the Sentinel service name when it names one.

    ``redis://``, ``rediss://`` and ``unix://`` as redis-py reads them,
    ``valkey://`` and ``valkeys://`` as valkey-py does (its client), and the
    Sentinel URLs of :func:`parse_sentinel_url`.

    Raises:
        ValueError: the URL is not a str or is malformed (the message hides any password).
    """
    if not isinstance(url, str):
        raise ValueError(f"url must be a str, got {type(url).__name__}")
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("valkey", "valkeys"):  # valkey-py's own URLs: its client
        valkey_kit = library_kit("valkey", asyncio)
        if valkey_kit is None:
            raise ValueError(f"a {scheme}:// URL needs the valkey package (pip install valkey)")
        try:
            return valkey_kit.plain.from_url(url), None
        except (ValueError, TypeError) as error:
            raise ValueError(f"invalid Valkey URL {redact_url(url)!r}: {error}") from None
    if scheme in SENTINEL_SCHEMES:
        addresses, service, kwargs = parse_sentinel_url(url)
        shared = {k: v for k, v in kwargs.items() if k in ("username", "password", "ssl")}
        return redis_kit(asyncio).sentinel(addresses, sentinel_kwargs=shared, **kwargs), service
    try:
        client = redis_kit(asyncio).plain.from_url(url)
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid Redis URL {redact_url(url)!r}: {error}") from None
    return client, None
