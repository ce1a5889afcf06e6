"""TLS trust for every outbound HTTPS call (Partner Center, Entra sign-in, Dataverse, certificate downloads)."""

from __future__ import annotations

import functools
import ssl


@functools.lru_cache(maxsize=8)
def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The system trust store plus the extra CA certificates of `ca_bundle` (TLS_CA_BUNDLE).

    An `ssl.SSLContext` rather than a path: httpx deprecates `verify=<path>`, and requests (MSAL's
    default transport) lets `REQUESTS_CA_BUNDLE` silently override a session's `verify`.
    """
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context
