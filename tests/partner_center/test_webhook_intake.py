"""Webhook intake: signature verification per reference 2.4 and what gets queued."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sandbox.server import Request, Response, RunningServer, Simulator, serve
from sandbox.tls import CertificateFiles, ensure_ca, issue_certificate
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
        super().__init__(base_url)

    def handle(self, request: Request) -> Response:
        name = request.path.rsplit("/", 1)[-1]
        if name in self.certificates:
            return Response(200, self.certificates[name], {"Content-Type": "application/pkix-cert"})
        return Response(404, b"BlobNotFound")


def _der(files: CertificateFiles) -> bytes:
    return x509.load_pem_x509_certificate(files.cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)


def _key(files: CertificateFiles) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertificateFiles]:
    other_ca_dir: Path = tmp_path_factory.mktemp("other-ca")
    return {
        "good.cer": issue_certificate("webhook-test-good", organization="Microsoft Corporation", server=False),
        "contoso.cer": issue_certificate("webhook-test-contoso", organization="Contoso Ltd", server=False),
        "untrusted.cer": issue_certificate(
            "webhook-test-untrusted", organization="Microsoft Corporation", server=False, directory=other_ca_dir
        ),
    }


@pytest.fixture(scope="module")
def cert_host(certificates: dict[str, CertificateFiles]) -> Iterator[RunningServer]:
    server = serve(
        lambda url: CertificateHost(url, {name: _der(files) for name, files in certificates.items()}), port=0
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def verifier(cert_host: RunningServer) -> SignatureVerifier:
    ca = str(ensure_ca().cert_path)
    return SignatureVerifier(
        allowed_hosts=[cert_host.url.removeprefix("https://")],
        trusted_roots=load_trusted_roots(ca),
        tls_verify=tls_context(ca),
    )


def signed_headers(body: bytes, files: CertificateFiles, url: str, *, header: str = "Authorization") -> dict[str, str]:
    signature = base64.b64encode(_key(files).sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
    value = f"Signature {signature}" if header == "Authorization" else signature
    return {header: value, "x-ms-certificate-url": url, "x-ms-signature-algorithm": "rsa-sha256"}


def test_valid_delivery_is_queued(
    verifier: SignatureVerifier, cert_host: RunningServer, certificates: dict[str, CertificateFiles]
) -> None:
    body = envelope()
    result = receive_event(
        body, signed_headers(body, certificates["good.cer"], f"{cert_host.url}/cert/good.cer"), verifier
    )
    assert result.status == 202
    assert result.message is not None and result.message.referral_id == REFERRAL_ID
    assert result.message.event == "referral-updated"
    # The x-ms-signature variant (SignatureTokenToMsSignatureHeader) is accepted too.
    other = signed_headers(body, certificates["good.cer"], f"{cert_host.url}/cert/good.cer", header="x-ms-signature")
    assert receive_event(body, other, verifier).status == 202


@pytest.mark.parametrize(
    "case",
    [
        "tampered body",
        "wrong host",
        "plain http",
        "untrusted chain",
        "wrong organisation",
        "wrong algorithm",
        "no signature",
        "no certificate url",
        "no algorithm",
    ],
)
def test_bad_signatures_are_refused_and_nothing_is_queued(
    case: str, verifier: SignatureVerifier, cert_host: RunningServer, certificates: dict[str, CertificateFiles]
) -> None:
    body = envelope()
    certificate, url = "good.cer", f"{cert_host.url}/cert/good.cer"
    if case == "untrusted chain":
        certificate, url = "untrusted.cer", f"{cert_host.url}/cert/untrusted.cer"
    if case == "wrong organisation":
        certificate, url = "contoso.cer", f"{cert_host.url}/cert/contoso.cer"
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
    result = receive_event(body, headers, verifier)
    assert result.status == 401
    assert result.message is None


def _good(body: bytes, cert_host: RunningServer, certificates: dict[str, CertificateFiles]) -> dict[str, str]:
    return signed_headers(body, certificates["good.cer"], f"{cert_host.url}/cert/good.cer")


def test_oversized_bad_json_and_event_routing(
    verifier: SignatureVerifier, cert_host: RunningServer, certificates: dict[str, CertificateFiles]
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
    verifier: SignatureVerifier, cert_host: RunningServer, certificates: dict[str, CertificateFiles]
) -> None:
    before = len([entry for entry in cert_host.simulator.requests_log() if entry["path"].endswith("good.cer")])
    for event in ("referral-created", "referral-updated", "related-referral-updated"):
        body = envelope(event)
        assert receive_event(body, _good(body, cert_host, certificates), verifier).status == 202
    after = len([entry for entry in cert_host.simulator.requests_log() if entry["path"].endswith("good.cer")])
    assert after - before <= 1
