"""HTTP/1.1 spoken byte by byte (RFC 9112), for proving a server's wire behaviour with no client library in between."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sandbox.tls import ensure_ca


@dataclass
class WireResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""


class WireConnection:
    """One TCP (or TLS) connection to `url`; requests are written raw and answers read back by hand."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        raw = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=str(ensure_ca().cert_path))
            raw = context.wrap_socket(raw, server_hostname=parts.hostname)
        self.sock = raw
        self.file = raw.makefile("rb")
        self.host = parts.netloc

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def send(self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def read_response(self, *, head: bool = False) -> WireResponse:
        status_line = self.file.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        response = WireResponse(int(status_line.split()[1]))
        while (line := self.file.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            response.headers[name.strip().lower()] = value.strip()
        if head or response.status < 200 or response.status in (204, 304):
            return response
        if response.headers.get("transfer-encoding", "").lower() == "chunked":
            while (size := int(self.file.readline().split(b";")[0], 16)) > 0:
                response.body += self.file.read(size)
                self.file.readline()
            self.file.readline()
        else:
            response.body = self.file.read(int(response.headers.get("content-length", "0")))
        return response

    def closed_by_peer(self) -> bool:
        """True once the server has closed its side (reads give end-of-file)."""
        try:
            return self.file.read(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True


def chunked(body: bytes, size: int = 7) -> bytes:
    """`body` in the chunked transfer coding, in chunks of `size` bytes."""
    pieces = [body[index : index + size] for index in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
