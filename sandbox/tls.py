"""The sandbox certificate authority and the server certificates it issues.

MSAL refuses non-https authorities and our clients verify TLS, so every simulator serves HTTPS
with a certificate chained to a CA generated on first use under `.sandbox/` (git-ignored). Clients
trust it through the `SANDBOX_CA_BUNDLE`-style settings, never through a "skip verification"
switch.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SANDBOX_DIR = PROJECT_ROOT / ".sandbox"

_lock = threading.Lock()


def sandbox_dir() -> Path:
    """Where generated sandbox material lives (`SANDBOX_DIR` overrides, for isolated test runs)."""
    return Path(os.environ.get("SANDBOX_DIR", str(DEFAULT_SANDBOX_DIR)))


@dataclass(frozen=True)
class CertificateFiles:
    cert_path: Path
    key_path: Path


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ensure_ca(directory: Path | None = None) -> CertificateFiles:
    """Create the sandbox CA once; later calls return the existing files."""
    directory = directory or sandbox_dir()
    files = CertificateFiles(directory / "ca.pem", directory / "ca-key.pem")
    with _lock:
        if files.cert_path.exists() and files.key_path.exists():
            return files
        directory.mkdir(parents=True, exist_ok=True)
        key = _new_key()
        name = _name("Co-sell Sync Sandbox CA", "Co-sell Sync Sandbox")
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(key, files.key_path)
        files.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return files


def _load_ca(files: CertificateFiles) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"{files.key_path} does not hold an RSA key")
    return cert, key


def issue_certificate(
    name: str,
    *,
    organization: str = "Co-sell Sync Sandbox",
    server: bool = True,
    directory: Path | None = None,
) -> CertificateFiles:
    """Issue (once) a certificate signed by the sandbox CA.

    `server=True` gives a TLS server certificate for 127.0.0.1 and localhost; `server=False` a
    signing certificate (used by the Partner Center simulator to sign webhook deliveries, with
    `organization="Microsoft Corporation"` as the real one carries).
    """
    directory = directory or sandbox_dir()
    ca_files = ensure_ca(directory)
    files = CertificateFiles(directory / f"{name}.pem", directory / f"{name}-key.pem")
    with _lock:
        if files.cert_path.exists() and files.key_path.exists():
            return files
        ca_cert, ca_key = _load_ca(ca_files)
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name if not server else "localhost", organization))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(key, files.key_path)
        files.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return files


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def ensure_intermediate_ca(name: str, *, organization: str, directory: Path | None = None) -> CertificateFiles:
    """An intermediate CA (once) under the sandbox root: real webhook signing certificates come
    through one, so the simulator's do too (path length 0: it issues end certificates only)."""
    directory = directory or sandbox_dir()
    root_files = ensure_ca(directory)
    files = CertificateFiles(directory / f"{name}.pem", directory / f"{name}-key.pem")
    with _lock:
        if files.cert_path.exists() and files.key_path.exists():
            return files
        root_cert, root_key = _load_ca(root_files)
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name, organization))
            .issuer_name(root_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        _write_key(key, files.key_path)
        files.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return files


def issue_signing_certificate(
    name: str, *, issuer: CertificateFiles, organization: str, ca_issuers_url: str | None = None
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A fresh (in-memory) signing certificate issued by the intermediate `issuer`, carrying the
    intermediate's download URL in its AIA "CA Issuers" entry when given (as Microsoft's do)."""
    issuer_cert, issuer_key = _load_ca(issuer)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name, organization))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca_issuers_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ca_issuers_url)
                    )
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key
