"""Partner Center webhook intake: signature check (reference 2.4) and what to enqueue.

`receive_event(body, headers, verifier)` is framework-free: the HTTP trigger passes the raw body
bytes and headers and gets back (status, JSON body, message to enqueue or None).

Order of checks, each refusal logged with its reason and nothing queued:
1. body over 64 KiB -> 413 (before anything reads it);
2. signature -> 401: `Authorization: Signature <b64>` or `x-ms-signature`; `x-ms-signature-algorithm`
   must be `rsa-sha256`; `x-ms-certificate-url` must be https on an allow-listed host
   (PC_WEBHOOK_CERT_HOSTS; `host:port` entries allowed, for the sandbox); the certificate is fetched
   without redirects and with a short timeout and cached per URL. The URL serves the leaf only, so
   the chain is built by `cryptography.x509.verification` from the self-signed certificates of
   PC_WEBHOOK_TRUSTED_ROOTS (default: the system trust store) as anchors, with intermediates from
   that same file (a bundled set) and from the leaf's AIA "CA Issuers" URL when its host is one of
   Microsoft's PKI hosts or in PC_WEBHOOK_CERT_HOSTS (cached). CA certificates must meet the Web
   PKI rules (basicConstraints CA, keyUsage keyCertSign); the leaf must not be a CA and, when it
   has keyUsage, allow digitalSignature. As in Microsoft's sample, the leaf's **issuer** must name
   `O=Microsoft Corporation`. The RSA PKCS#1 v1.5 SHA-256 signature is checked over the raw body
   bytes (never re-serialised JSON). Unauthenticated bodies are never parsed;
3. JSON and envelope -> 400;
4. `test-created` -> 200 (logged); referral events -> 200 + `PartnerCenterChange` (Microsoft's
   sample answers "OK"); other events -> 200, ignored.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import verification
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from pydantic import ValidationError

from shared.http import tls_context
from shared.model.webhook import TEST_EVENT, WebhookEvent
from shared.partner_center.contract import contract
from shared.settings import Settings
from shared.sync.queues import PartnerCenterChange

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_CERTIFICATE_BYTES = 64 * 1024
REQUIRED_ORGANIZATION = contract().webhook_issuer_organization
CERTIFICATE_CACHE_SECONDS = 3600.0
MAX_CHAIN_DEPTH = 6
MICROSOFT_PKI_HOSTS = ("www.microsoft.com", "caissuers.microsoft.com")
"""Hosts whose AIA "CA Issuers" URLs we follow (Microsoft's PKI repository), besides PC_WEBHOOK_CERT_HOSTS."""


class SignatureError(Exception):
    """The delivery is not provably from Partner Center; `reason` says why (logged, never returned in full)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IntakeResult:
    status: int
    body: dict[str, Any]
    message: PartnerCenterChange | None = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def load_trusted_roots(path: str | None) -> list[x509.Certificate]:
    """Certificates of the PEM file `path`, or of the system trust store when `path` is None."""
    if path is None:
        defaults = ssl.get_default_verify_paths()
        path = defaults.cafile or defaults.openssl_cafile
    try:
        return x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise ValueError(f"PC_WEBHOOK_TRUSTED_ROOTS: cannot read certificates from {path!r}: {error}") from error


class SignatureVerifier:
    """Checks Partner Center's webhook signatures; safe to share between threads."""

    def __init__(
        self,
        *,
        allowed_hosts: list[str],
        trusted_roots: list[x509.Certificate],
        tls_verify: ssl.SSLContext | bool = True,
        timeout_seconds: float = 5.0,
        http: httpx.Client | None = None,
    ) -> None:
        if not allowed_hosts:
            raise ValueError("PC_WEBHOOK_CERT_HOSTS names no host")
        anchors = [certificate for certificate in trusted_roots if certificate.issuer == certificate.subject]
        if not anchors:
            raise ValueError("PC_WEBHOOK_TRUSTED_ROOTS holds no root (self-signed) certificate")
        self._allowed_hosts = {host.lower() for host in allowed_hosts}
        self._store = verification.Store(anchors)
        self._bundled_intermediates = [certificate for certificate in trusted_roots if certificate not in anchors]
        self._http = http or httpx.Client(verify=tls_verify, timeout=timeout_seconds, follow_redirects=False)
        self._cache: dict[str, tuple[float, list[x509.Certificate]]] = {}
        self._issuer_cache: dict[str, tuple[float, list[x509.Certificate]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SignatureVerifier:
        return cls(
            allowed_hosts=settings.webhook_cert_hosts,
            trusted_roots=load_trusted_roots(settings.pc_webhook_trusted_roots),
            tls_verify=tls_context(settings.tls_ca_bundle),
        )

    # ---- the checks -----------------------------------------------------------------------------
    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise `SignatureError` unless `body` is signed by a trusted Partner Center certificate."""
        signature = self._signature(headers)
        algorithm = (_header(headers, "x-ms-signature-algorithm") or "").strip()
        if algorithm.lower() != "rsa-sha256":
            raise SignatureError(f"signature algorithm {algorithm or '(missing)'!r} is not rsa-sha256")
        url = (_header(headers, "x-ms-certificate-url") or "").strip()
        certificate = self._certificate(url)
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SignatureError("the signing certificate does not hold an RSA key")
        try:
            public_key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as error:
            raise SignatureError("the signature does not match the body") from error

    @staticmethod
    def _signature(headers: Mapping[str, str]) -> bytes:
        authorization = _header(headers, "authorization")
        if authorization and authorization.split(" ", 1)[0].lower() == "signature":
            encoded = authorization.split(" ", 1)[1] if " " in authorization else ""
        else:
            # With SignatureTokenToMsSignatureHeader the value may still carry the "Signature " prefix.
            encoded = (_header(headers, "x-ms-signature") or "").strip()
            if encoded.lower().startswith("signature "):
                encoded = encoded[len("signature ") :]
        if not encoded.strip():
            raise SignatureError("no signature (Authorization: Signature ... or x-ms-signature)")
        try:
            return base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError) as error:
            raise SignatureError("the signature is not base64") from error

    def _netloc(self, url: str, *, schemes: tuple[str, ...]) -> str | None:
        parts = urlsplit(url)
        if parts.scheme not in schemes or parts.username or parts.password or not parts.hostname:
            return None
        return parts.hostname.lower() + (f":{parts.port}" if parts.port is not None else "")

    def _check_url(self, url: str) -> None:
        if not url:
            raise SignatureError("no x-ms-certificate-url header")
        if urlsplit(url).scheme != "https":
            raise SignatureError(f"certificate URL {url!r} is not https")
        netloc = self._netloc(url, schemes=("https",))
        if netloc is None:
            raise SignatureError(f"certificate URL {url!r} is malformed")
        if netloc not in self._allowed_hosts:
            raise SignatureError(f"certificate host {netloc!r} is not in PC_WEBHOOK_CERT_HOSTS")

    def _certificate(self, url: str) -> x509.Certificate:
        """The signing certificate at `url`. Microsoft's URL serves the leaf alone; should it serve
        a bundle, the first certificate is the leaf and the others are offered as intermediates."""
        self._check_url(url)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None and now - cached[0] < CERTIFICATE_CACHE_SECONDS:
            certificates = cached[1]
        else:
            certificates = self._download(url)
            if not certificates:
                raise SignatureError(f"{url} holds no certificate")
            with self._lock:
                self._cache[url] = (now, certificates)
        # Validity and chain are re-checked on every use: a cached certificate can expire.
        self._check_certificate(certificates[0], served_with=certificates[1:])
        return certificates[0]

    def _download(self, url: str) -> list[x509.Certificate]:
        """The certificates at `url`: DER, PEM, or a PKCS#7 bundle (what AIA URLs often serve)."""
        try:
            response = self._http.get(url)
        except httpx.HTTPError as error:
            raise SignatureError(f"cannot download the certificate from {url}: {type(error).__name__}") from error
        if response.status_code != 200:
            raise SignatureError(f"certificate download from {url} answered {response.status_code}")
        content = response.content
        if len(content) > MAX_CERTIFICATE_BYTES:
            raise SignatureError("the certificate download is too large")
        loaders = (
            (lambda data: x509.load_pem_x509_certificates(data))
            if content.lstrip().startswith(b"-----BEGIN")
            else (lambda data: [x509.load_der_x509_certificate(data)]),
            pkcs7.load_der_pkcs7_certificates,
        )
        for load in loaders:
            try:
                return list(load(content))
            except ValueError:
                continue
        raise SignatureError(f"{url} does not hold an X.509 certificate")

    def _check_certificate(self, certificate: x509.Certificate, *, served_with: list[x509.Certificate]) -> None:
        organizations = [
            attribute.value for attribute in certificate.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        ]
        if REQUIRED_ORGANIZATION not in organizations:
            raise SignatureError(f"certificate issuer organisation {organizations} is not {REQUIRED_ORGANIZATION!r}")
        self._check_leaf_extensions(certificate)
        self._check_chain(certificate, served_with)

    @staticmethod
    def _check_leaf_extensions(certificate: x509.Certificate) -> None:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is not None and constraints.ca:
            raise SignatureError("the signing certificate is a CA certificate, not a signing one")
        try:
            usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.digital_signature:
            raise SignatureError("the signing certificate's keyUsage does not allow digital signatures")

    def _check_chain(self, certificate: x509.Certificate, served_with: list[x509.Certificate]) -> None:
        """Build and verify the chain leaf -> intermediates -> a trusted root (validity, Web PKI CA rules)."""
        intermediates = [*served_with, *self._bundled_intermediates, *self._aia_issuers(certificate)]
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(dt.datetime.now(dt.UTC))
            .max_chain_depth(MAX_CHAIN_DEPTH)
            # CAs: the Web PKI rules. The leaf: Microsoft publishes no profile for it (its EKU and
            # SAN are unknown), so only our own checks above apply.
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(certificate, intermediates)
        except verification.VerificationError as error:
            raise SignatureError(f"the certificate does not chain to PC_WEBHOOK_TRUSTED_ROOTS: {error}") from error

    def _aia_issuers(self, certificate: x509.Certificate) -> list[x509.Certificate]:
        """Intermediates named by the leaf's AIA "CA Issuers" URLs on allowed hosts (cached); errors
        are logged and the chain is then built without them."""
        try:
            access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        except x509.ExtensionNotFound:
            return []
        found: list[x509.Certificate] = []
        for description in access:
            location = description.access_location
            if description.access_method != AuthorityInformationAccessOID.CA_ISSUERS:
                continue
            if not isinstance(location, x509.UniformResourceIdentifier):
                continue
            url = location.value
            # CA Issuers URLs are usually plain http: the chain check, not TLS, is what makes them safe.
            netloc = self._netloc(url, schemes=("http", "https"))
            if netloc is None or (netloc not in self._allowed_hosts and netloc not in MICROSOFT_PKI_HOSTS):
                logger.info("AIA CA Issuers URL %s is not on an allowed host; not fetched", url)
                continue
            now = time.monotonic()
            with self._lock:
                cached = self._issuer_cache.get(url)
            if cached is not None and now - cached[0] < CERTIFICATE_CACHE_SECONDS:
                found.extend(cached[1])
                continue
            try:
                issuers = self._download(url)
            except SignatureError as error:
                logger.warning("intermediate certificate not fetched: %s", error.reason)
                continue
            with self._lock:
                self._issuer_cache[url] = (now, issuers)
            found.extend(issuers)
        return found


def _refuse(status: int, code: str, message: str) -> IntakeResult:
    logger.warning("Partner Center webhook refused (%d %s): %s", status, code, message)
    return IntakeResult(status, {"error": {"code": code, "message": message}})


def receive_event(body: bytes, headers: Mapping[str, str], verifier: SignatureVerifier) -> IntakeResult:
    """Decide what one webhook delivery means (see the module docstring)."""
    if len(body) > MAX_BODY_BYTES:
        return _refuse(413, "payloadTooLarge", f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        verifier.verify(body, headers)
    except SignatureError as error:
        logger.warning("Partner Center webhook signature rejected: %s", error.reason)
        # The reason is logged, not returned: a forger learns nothing about which check failed.
        return IntakeResult(401, {"error": {"code": "invalidSignature", "message": "signature verification failed"}})
    try:
        event = WebhookEvent.model_validate(json.loads(body.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return _refuse(400, "invalidJson", f"the body is not JSON: {error}")
    except ValidationError as error:
        return _refuse(400, "invalidEvent", f"the body is not a Partner Center event: {error.errors()[0]['msg']}")
    if event.EventName == TEST_EVENT:
        logger.info("Partner Center test event received (%s)", event.ResourceUri)
        return IntakeResult(200, {"status": "test event received"})
    if not event.is_referral_event:
        logger.info("Partner Center event %r ignored: not a referral event", event.EventName)
        return IntakeResult(200, {"status": "ignored", "event": event.EventName})
    referral_id = event.referral_id()
    if referral_id is None:
        return _refuse(400, "invalidEvent", f"ResourceUri {event.ResourceUri!r} names no referral")
    message = PartnerCenterChange(referral_id=referral_id, event=event.EventName)
    logger.info("Partner Center %s for referral %s accepted", event.EventName, referral_id)
    answer = contract().webhook_answer_status
    return IntakeResult(answer, {"status": "accepted", "referral_id": referral_id}, message)
