"""The multipart `$batch` format of the Dataverse Web API (crm-apis.md B2 "$batch").

A batch body is `multipart/mixed` with one part per request; a part may itself be a
`multipart/mixed` change set (atomic, no GETs, `Content-ID` referable as `$<id>`). Each request
part is `Content-Type: application/http` holding a raw HTTP request. The response mirrors it with
`batchresponse_` / `changesetresponse_` boundaries and raw HTTP responses.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus

from sandbox.odata import ODataError

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def boundary_of(content_type: str | None) -> str:
    found = _BOUNDARY.search(content_type or "")
    if not found or not (content_type or "").lower().startswith("multipart/mixed"):
        raise ODataError(
            400, "0x80060888", "The batch request must have a 'multipart/mixed' Content-Type with a boundary."
        )
    return found.group(1)


@dataclass
class BatchRequest:
    method: str
    url: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    content_id: str | None = None


@dataclass
class ChangeSet:
    requests: list[BatchRequest] = field(default_factory=list)


def _split_parts(body: bytes, boundary: str) -> list[bytes]:
    delimiter = b"--" + boundary.encode()
    chunks = body.split(delimiter)
    parts: list[bytes] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        parts.append(chunk.strip(b"\r\n"))
    if len(chunks) < 2:
        raise ODataError(400, "0x80060888", f"The batch body holds no part delimited by '--{boundary}'.")
    return parts


def _headers_and_body(block: bytes) -> tuple[dict[str, str], bytes]:
    normalized = block.replace(b"\r\n", b"\n")
    head, _, rest = normalized.partition(b"\n\n")
    headers: dict[str, str] = {}
    for line in head.decode("utf-8").split("\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def _parse_request(part: bytes) -> BatchRequest:
    part_headers, http = _headers_and_body(part)
    request_line, _, remainder = http.partition(b"\n")
    words = request_line.decode("utf-8").strip().split(" ")
    if len(words) < 2:
        raise ODataError(400, "0x80060888", f"Invalid request line in batch part: {request_line!r}.")
    headers, body = _headers_and_body(remainder) if remainder.strip() else ({}, b"")
    return BatchRequest(words[0].upper(), words[1], headers, body.strip(), part_headers.get("content-id"))


def parse_batch(body: bytes, content_type: str | None) -> list[BatchRequest | ChangeSet]:
    items: list[BatchRequest | ChangeSet] = []
    for part in _split_parts(body, boundary_of(content_type)):
        headers, inner = _headers_and_body(part)
        if headers.get("content-type", "").lower().startswith("multipart/mixed"):
            change_set = ChangeSet(
                [_parse_request(p) for p in _split_parts(inner, boundary_of(headers["content-type"]))]
            )
            if any(request.method == "GET" for request in change_set.requests):
                raise ODataError(400, "0x80060888", "A change set cannot contain a GET request.")
            items.append(change_set)
        else:
            items.append(_parse_request(part))
    if sum(len(item.requests) if isinstance(item, ChangeSet) else 1 for item in items) > 1000:
        raise ODataError(400, "0x80060888", "The batch contains more than the maximum of 1000 requests.")
    return items


@dataclass
class PartResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


def _format_response(response: PartResponse) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if response.content_id:
        lines.append(f"Content-ID: {response.content_id}")
    reason = HTTPStatus(response.status).phrase
    lines += ["", f"HTTP/1.1 {response.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    lines += ["", response.body.decode("utf-8")]
    return "\r\n".join(lines)


def format_batch(results: list[PartResponse | list[PartResponse]]) -> tuple[str, bytes]:
    """(Content-Type, body) of the batch response."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[str] = []
    for result in results:
        chunks.append(f"--{boundary}")
        if isinstance(result, list):
            change_boundary = f"changesetresponse_{uuid.uuid4()}"
            inner = [f"--{change_boundary}\r\n{_format_response(item)}" for item in result]
            chunks.append(
                f"Content-Type: multipart/mixed; boundary={change_boundary}\r\n\r\n"
                + "\r\n".join(inner)
                + f"\r\n--{change_boundary}--"
            )
        else:
            chunks.append(_format_response(result))
    body = "\r\n".join(chunks) + f"\r\n--{boundary}--\r\n"
    return f"multipart/mixed; boundary={boundary}", body.encode("utf-8")


def parse_batch_response(content_type: str | None, body: bytes) -> list[PartResponse]:
    """Flatten a batch response into its part responses, in order (used by clients and tests)."""
    parts: list[PartResponse] = []
    for part in _split_parts(body, boundary_of(content_type)):
        headers, inner = _headers_and_body(part)
        if headers.get("content-type", "").lower().startswith("multipart/mixed"):
            for change in _split_parts(inner, boundary_of(headers["content-type"])):
                parts.append(_parse_response(change))
        else:
            parts.append(_parse_response(part))
    return parts


def _parse_response(part: bytes) -> PartResponse:
    part_headers, http = _headers_and_body(part)
    status_line, _, remainder = http.partition(b"\n")
    status = int(status_line.decode("utf-8").split(" ")[1])
    headers, body = _headers_and_body(remainder) if remainder.strip() else ({}, b"")
    return PartResponse(status, headers, body.strip(), part_headers.get("content-id"))
