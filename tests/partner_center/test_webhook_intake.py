"""Webhook intake: signature verification per reference 2.4 and what gets queued."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sandbox.server import Request, Response, RunningServer, Simulator, serve
from sandbox.tls import CertificateFiles, ensure_ca, ensure_intermediate_ca, issue_signing_certificate
from shared.http import tls_context
from shared.partner_center.webhook import SignatureVerifier, load_trusted_roots, receive_event

REFERRAL_ID = "8c0f4d7e-2b9a-4c61-9e3f-5a1d2c7b8e90"


def envelope(
    event: str = "referral-updated", resource: str = f"https://h/engagements/v1/referrals/{REFERRAL_ID}"
) -> bytes:
    return json.dumps(
        {
            "EventName": event,
            "ResourceUri": resource,
            "ResourceName": "referral",
            "AuditUri": None,
            "ResourceChangeUtcDate": "2026-11-18T09:15:02.5485487+00:00",
        }
    ).encode()


class CertificateHost(Simulator):
    """Serves certificates (DER) by name, like PC's blob container."""

    name = "certificate-host"

    def __init__(self, base_url: str, certificates: dict[str, bytes]) -> None:
        self.certificates = certificates
        self.downloads: list[str] = []  # names asked for (this host bypasses the simulator request log)
        super().__init__(base_url)

    def handle(self, request: Request) -> Response:
        name = request.path.rsplit("/", 1)[-1]
        self.downloads.append(name)
        if name in self.certificates:
            return Response(200, self.certificates[name], {"Content-Type": "application/pkix-cert"})
        return Response(404, b"BlobNotFound")


@dataclass(frozen=True)
class Signer:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey


def _unusual_leaf(issuer: CertificateFiles, *, ca: bool, digital_signature: bool) -> Signer:
    """A leaf under `issuer` that breaks one rule: marked a CA, or without digitalSignature usage."""
    issuer_cert = x509.load_pem_x509_certificate(issuer.cert_path.read_bytes())
    issuer_key = serialization.load_pem_private_key(issuer.key_path.read_bytes(), password=None)
    assert isinstance(issuer_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(digital_signature, False, not digital_signature, False, False, False, False, False, False)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Microsoft Corporation")]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return Signer(certificate, key)


@pytest.fixture(scope="module")
def cert_host() -> Iterator[RunningServer]:
    server = serve(lambda url: CertificateHost(url, {}), port=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory, cert_host: RunningServer) -> dict[str, Signer]:
    """Signers by certificate name, each served by `cert_host` (leaf only) with its intermediates."""
    microsoft_ca = ensure_intermediate_ca("webhook-test-microsoft-ca", organization="Microsoft Corporation")
    contoso_ca = ensure_intermediate_ca("webhook-test-contoso-ca", organization="Contoso Ltd")
    other_root_ca = ensure_intermediate_ca(
        "webhook-test-untrusted-ca", organization="Microsoft Corporation", directory=tmp_path_factory.mktemp("other")
    )
    host = cert_host.simulator
    assert isinstance(host, CertificateHost)
    intermediate_url = f"{cert_host.url}/cert/microsoft-ca.cer"

    def leaf(issuer: CertificateFiles, aia: str | None) -> Signer:
        certificate, key = issue_signing_certificate(
            "webhook-test", issuer=issuer, organization="Microsoft Corporation", ca_issuers_url=aia
        )
        return Signer(certificate, key)

    signers = {
        "good.cer": leaf(microsoft_ca, intermediate_url),
        "no-aia.cer": leaf(microsoft_ca, None),
        "aia-elsewhere.cer": leaf(microsoft_ca, intermediate_url.replace("127.0.0.1", "localhost")),
        "contoso.cer": leaf(contoso_ca, f"{cert_host.url}/cert/contoso-ca.cer"),
        "untrusted.cer": leaf(other_root_ca, f"{cert_host.url}/cert/untrusted-ca.cer"),
        "from-root.cer": leaf(ensure_ca(), None),
        "ca-leaf.cer": _unusual_leaf(microsoft_ca, ca=True, digital_signature=True),
        "no-signing-usage.cer": _unusual_leaf(microsoft_ca, ca=False, digital_signature=False),
    }
    host.certificates["microsoft-ca.cer"] = _der_of(microsoft_ca)
    host.certificates["contoso-ca.cer"] = _der_of(contoso_ca)
    host.certificates["untrusted-ca.cer"] = _der_of(other_root_ca)
    for name, signer in signers.items():
        host.certificates[name] = signer.certificate.public_bytes(serialization.Encoding.DER)
    return signers


def _der_of(files: CertificateFiles) -> bytes:
    return x509.load_pem_x509_certificate(files.cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def verifier(cert_host: RunningServer) -> SignatureVerifier:
    ca = str(ensure_ca().cert_path)
    return SignatureVerifier(
        allowed_hosts=[cert_host.url.removeprefix("https://")],
        trusted_roots=load_trusted_roots(ca),
        tls_verify=tls_context(ca),
    )


def signed_headers(body: bytes, signer: Signer, url: str, *, header: str = "Authorization") -> dict[str, str]:
    signature = base64.b64encode(signer.key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
    value = f"Signature {signature}" if header == "Authorization" else signature
    return {header: value, "x-ms-certificate-url": url, "x-ms-signature-algorithm": "rsa-sha256"}


def test_valid_delivery_is_queued(
    verifier: SignatureVerifier, cert_host: RunningServer, certificates: dict[str, Signer]
) -> None:
    body = envelope()
    result = receive_event(
        body, signed_headers(body, certificates["good.cer"], f"{cert_host.url}/cert/good.cer"), verifier
    )
    assert result.status == 200  # Microsoft's sample answers "OK"
    assert result.message is not None and result.message.referral_id == REFERRAL_ID
    assert result.message.event == "referral-updated"
    # The x-ms-signature variant (SignatureTokenToMsSignatureHeader) is accepted too.
    other = signed_headers(body, certificates["good.cer"], f"{cert_host.url}/cert/good.cer", header="x-ms-signature")
    assert receive_event(body, other, verifier).status == 200


@pytest.mark.parametrize(
    "case",
    [
        "tampered body",
        "wrong host",
        "plain http",
        "untrusted chain",
        "wrong organisation",
        "issued by the root itself",
        "intermediate on a host not allowed",
        "intermediate not found",
        "leaf is a CA",
        "leaf may not sign",
        "wrong algorithm",
        "no signature",
        "no certificate url",
        "no algorithm",
    ],
)
def test_bad_signatures_are_refused_and_nothing_is_queued(
    caplog: pytest.LogCaptureFixture,
    case: str,
    verifier: SignatureVerifier,
    cert_host: RunningServer,
    certificates: dict[str, Signer],
) -> None:
    body = envelope()
    certificate, url = "good.cer", f"{cert_host.url}/cert/good.cer"
    if case == "untrusted chain":
        certificate, url = "untrusted.cer", f"{cert_host.url}/cert/untrusted.cer"
    named = {
        "wrong organisation": "contoso.cer",
        "issued by the root itself": "from-root.cer",
        "intermediate on a host not allowed": "aia-elsewhere.cer",
        "intermediate not found": "no-aia.cer",
        "leaf is a CA": "ca-leaf.cer",
        "leaf may not sign": "no-signing-usage.cer",
    }
    if case in named:
        certificate, url = named[case], f"{cert_host.url}/cert/{named[case]}"
    if case == "wrong host":
        url = url.replace("127.0.0.1", "localhost")
    if case == "plain http":
        url = url.replace("https://", "http://")
    headers = signed_headers(body, certificates[certificate], url)
    if case == "tampered body":
        body = body.replace(b"referral-updated", b"referral-created")
    if case == "wrong algorithm":
        headers["x-ms-signature-algorithm"] = "rsa-sha1"
    missing = {
        "no signature": "Authorization",
        "no certificate url": "x-ms-certificate-url",
        "no algorithm": "x-ms-signature-algorithm",
    }
    if case in missing:
        del headers[missing[case]]
    with caplog.at_level(logging.WARNING, logger="shared.partner_center.webhook"):
        result = receive_event(body, headers, verifier)
    assert result.status == 401
    assert result.message is None
    reasons = {
        "tampered body": "does not match the body",
        "wrong host": "not in PC_WEBHOOK_CERT_HOSTS",
        "plain http": "not https",
        "untrusted chain": "does not chain",
        "wrong organisation": "issuer organisation ['Contoso Ltd']",
        "issued by the root itself": "issuer organisation ['Co-sell Sync Sandbox']",
        "intermediate on a host not allowed": "does not chain",
        "intermediate not found": "does not chain",
        "leaf is a CA": "is a CA certificate",
        "leaf may not sign": "does not allow digital signatures",
        "wrong algorithm": "is not rsa-sha256",
        "no signature": "no signature",
        "no certificate url": "no x-ms-certificate-url",
        "no algorithm": "is not rsa-sha256",
    }
    assert reasons[case] in caplog.text


def _good(body: bytes, cert_host: RunningServer, certificates: dict[str, Signer]) -> dict[str, str]:
    return signed_headers(body, certificates["good.cer"], f"{cert_host.url}/cert/good.cer")


def test_oversized_bad_json_and_event_routing(
    verifier: SignatureVerifier, cert_host: RunningServer, certificates: dict[str, Signer]
) -> None:
    huge = b"{" + b" " * (64 * 1024) + b"}"
    assert receive_event(huge, _good(huge, cert_host, certificates), verifier).status == 413
    not_json = b"{not json"
    assert receive_event(not_json, _good(not_json, cert_host, certificates), verifier).status == 400
    no_event = b'{"ResourceUri": "x"}'
    assert receive_event(no_event, _good(no_event, cert_host, certificates), verifier).status == 400

    test_event = envelope("test-created", "https://h/webhooks/v1/registration/validationEvents/abc")
    result = receive_event(test_event, _good(test_event, cert_host, certificates), verifier)
    assert (result.status, result.message) == (200, None)
    other = envelope("invoice-ready", "https://h/invoices/1")
    result = receive_event(other, _good(other, cert_host, certificates), verifier)
    assert (result.status, result.message) == (200, None)
    no_id = envelope("referral-created", "https://h/engagements/v1/somethingelse")
    assert receive_event(no_id, _good(no_id, cert_host, certificates), verifier).status == 400


def test_certificate_is_downloaded_once(
    verifier: SignatureVerifier, cert_host: RunningServer, certificates: dict[str, Signer]
) -> None:
    host = cert_host.simulator
    assert isinstance(host, CertificateHost)
    before = host.downloads.count("good.cer")
    for event in ("referral-created", "referral-updated", "related-referral-updated"):
        body = envelope(event)
        assert receive_event(body, _good(body, cert_host, certificates), verifier).status == 200
    assert host.downloads.count("good.cer") - before == 1  # a fresh verifier: one download, then its cache


def test_intermediates_come_from_the_aia_url_or_the_bundled_set(
    cert_host: RunningServer, certificates: dict[str, Signer], tmp_path: Path
) -> None:
    """The certificate URL serves the leaf only: the intermediate comes from the leaf's AIA "CA
    Issuers" URL (fetched once, cached) or, without one, from PC_WEBHOOK_TRUSTED_ROOTS' bundle."""
    ca = ensure_ca().cert_path
    body = envelope()
    host = cert_host.simulator
    assert isinstance(host, CertificateHost)

    def fetched() -> int:
        return host.downloads.count("microsoft-ca.cer")

    aia = SignatureVerifier(
        allowed_hosts=[cert_host.url.removeprefix("https://")],
        trusted_roots=load_trusted_roots(str(ca)),
        tls_verify=tls_context(str(ca)),
    )
    before = fetched()
    for _ in range(2):
        headers = signed_headers(body, certificates["good.cer"], f"{cert_host.url}/cert/good.cer")
        assert receive_event(body, headers, aia).status == 200
    assert fetched() - before == 1
    bundle = tmp_path / "roots.pem"
    intermediate = x509.load_der_x509_certificate(host.certificates["microsoft-ca.cer"])
    bundle.write_bytes(ca.read_bytes() + intermediate.public_bytes(serialization.Encoding.PEM))
    bundled = SignatureVerifier(
        allowed_hosts=[cert_host.url.removeprefix("https://")],
        trusted_roots=load_trusted_roots(str(bundle)),
        tls_verify=tls_context(str(ca)),
    )
    headers = signed_headers(body, certificates["no-aia.cer"], f"{cert_host.url}/cert/no-aia.cer")
    assert receive_event(body, headers, bundled).status == 200
    # Sources are silent on a URL serving leaf and intermediate together: the extra one is used.
    host.certificates["leaf-and-intermediate.pem"] = certificates["no-aia.cer"].certificate.public_bytes(
        serialization.Encoding.PEM
    ) + intermediate.public_bytes(serialization.Encoding.PEM)
    headers = signed_headers(body, certificates["no-aia.cer"], f"{cert_host.url}/cert/leaf-and-intermediate.pem")
    assert receive_event(body, headers, aia).status == 200
