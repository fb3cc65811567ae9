"""A small DICOMweb client: QIDO-RS search, WADO-RS retrieve, STOW-RS store, over httpx.

Authentication as DICOMweb servers take it: HTTP basic (user and password in the URL, or
`user` plus a password from the environment) or a bearer token; TLS checked against the
system's CAs or a CA file. Every answer is read up to a bound before it is parsed: a server
cannot make the client hold more than `max_bytes` of one instance or `MAX_JSON_BYTES` of
one search page. A refusal that concerns one instance (gone, too large, malformed) is an
`ImageError` for that instance; one that concerns the server (unreachable, credentials, a
server error) is a `RemoteError` or `AuthenticationError` that stops the run.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from pneumo_onnx.engine.errors import (
    AuthenticationError,
    ImageError,
    RemoteError,
    UsageError,
    first_line,
)
from pneumo_onnx.engine.offline.dicomweb import multipart
from pneumo_onnx.engine.runtime.isolated import MAX_FILE_BYTES

MB = 2**20
MAX_JSON_BYTES = 32 * MB  # one page of search results, or one STOW-RS answer
PAGE = 500  # instances per QIDO-RS page (limit/offset)
DICOM_JSON = "application/dicom+json"
# What a search asks for besides the defaults: what `views` decides on.
INCLUDE = ("00080060", "00180015", "00185101")  # Modality, BodyPartExamined, ViewPosition
STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"


@dataclass(frozen=True)
class Found:
    """One instance a search found: its three UIDs and the attributes the search returned."""

    study: str
    series: str
    sop: str
    attributes: dict[str, Any]  # DICOM JSON (PS3.18 F.2), tag -> {"vr": ..., "Value": [...]}

    @property
    def path(self) -> str:
        return f"studies/{self.study}/series/{self.series}/instances/{self.sop}"


def value(attributes: dict[str, Any], tag: str) -> str | None:
    """The first value of `tag` in DICOM JSON as text; None when absent or empty."""
    values = (attributes.get(tag) or {}).get("Value") or []
    return None if not values or values[0] is None else str(values[0])


class Client:
    """One DICOMweb service: `url` is its root (`https://pacs/dicom-web`)."""

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        ca_file: str | None = None,
        timeout: float = 60.0,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as e:
            raise UsageError(f"--dicomweb {url!r} is not a URL: {first_line(e)}") from e
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UsageError(f"--dicomweb: expected an http:// or https:// URL, got {url!r}")
        if parsed.username:  # user:password@host, as curl and most PACS tools take it
            user, password = user or parsed.username, password or parsed.password
        if user and token:
            raise UsageError("give either a user and password or a bearer token, not both")
        if user and not password:
            raise UsageError(f"a password for {user} is needed (PNEUMO_DICOMWEB_PASSWORD)")
        self.url = str(parsed.copy_with(username=None, password=None)).rstrip("/")
        self.max_bytes = max_bytes
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            auth=(user, password) if user and password else None,
            headers=headers,
            verify=_verify(ca_file),
            timeout=timeout,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- QIDO-RS ---------------------------------------------------------------------------

    def search(self, studies: list[str], since: str | None) -> Iterator[Found]:
        """Every instance of `studies` (all studies if none), of studies dated `since` or
        later (YYYYMMDD) if given, page by page."""
        params: dict[str, Any] = {"includefield": list(INCLUDE)}
        if since:
            params["StudyDate"] = f"{since}-"
        for path in [f"studies/{s}/instances" for s in studies] or ["instances"]:
            offset = 0
            while True:
                page = self._json(
                    "GET", path, "search", {**params, "limit": PAGE, "offset": offset}
                )
                for attributes in page:
                    found = _found(attributes)
                    if found is not None:
                        yield found
                if len(page) < PAGE:
                    break
                offset += len(page)

    def metadata(self, found: Found) -> dict[str, Any]:
        """An instance's attributes (WADO-RS metadata), for servers whose search leaves out
        the attributes asked for."""
        answer = self._json("GET", f"{found.path}/metadata", f"metadata of {found.sop}")
        if not answer or not isinstance(answer[0], dict):
            raise ImageError(f"{found.sop}: the server sent no metadata")
        return answer[0]

    # --- WADO-RS ---------------------------------------------------------------------------

    def retrieve(self, found: Found) -> bytes:
        """The instance as a DICOM file (as stored: any transfer syntax), at most max_bytes."""
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        with self._request("GET", found.path, f"retrieve {found.sop}", accept) as r:
            if r.status_code in (404, 410):
                raise ImageError(f"{found.sop}: the server no longer has this instance")
            self._check(r, f"retrieve {found.sop}")
            body = _bounded(r, self.max_bytes, f"instance {found.sop}")
            content_type = r.headers.get("content-type", "")
        parts = [p for p in multipart.parse(body, content_type) if p.data]
        if len(parts) != 1:
            raise ImageError(f"{found.sop}: expected one DICOM part, the server sent {len(parts)}")
        return parts[0].data

    # --- STOW-RS ---------------------------------------------------------------------------

    def store(self, study: str, instances: list[bytes]) -> None:
        """Store DICOM files into `study`; a RemoteError unless the server took every one."""
        body, content_type = multipart.build(instances)
        what = f"store {len(instances)} instance(s) into study {study}"
        with self._request(
            "POST", f"studies/{study}", what, DICOM_JSON, content=body, type=content_type
        ) as r:
            self._check(r, what)
            answer = _bounded(r, MAX_JSON_BYTES, "the STOW-RS answer")
        try:
            result = json.loads(answer) if answer.strip() else {}
        except ValueError:
            result = {}  # some servers answer XML: the status code said it was stored
        failed = (result.get("00081198") or {}).get("Value") if isinstance(result, dict) else None
        if failed:
            raise RemoteError(f"{self.url} refused to {what}: {len(failed)} instance(s) failed")

    # --- internals -------------------------------------------------------------------------

    def _json(
        self, method: str, path: str, what: str, params: dict[str, Any] | None = None
    ) -> list[Any]:
        with self._request(method, path, what, DICOM_JSON, params=params) as r:
            if r.status_code in (204, 404):  # no match; no such study or instance (any more)
                return []
            self._check(r, what)
            body = _bounded(r, MAX_JSON_BYTES, f"the answer to {what}")
        try:
            answer = json.loads(body) if body.strip() else []
        except ValueError as e:
            raise RemoteError(f"{self.url} answered {what} with invalid JSON: {e}") from e
        if not isinstance(answer, list):
            raise RemoteError(f"{self.url} answered {what} with JSON that is not a list")
        return answer

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        accept: str,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        type: str | None = None,
    ) -> _Answer:
        """The answer, streamed: its body is read only through `_bounded`."""
        headers = {"Accept": accept, **({"Content-Type": type} if type else {})}
        request = self._http.build_request(
            method, f"{self.url}/{path}", params=params, content=content, headers=headers
        )
        try:
            return _Answer(self._http.send(request, stream=True))
        except httpx.ConnectError as e:
            if isinstance(e.__context__, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(e):
                raise RemoteError(
                    f"cannot {what}: the TLS certificate of {self.url} is not trusted "
                    f"({first_line(e)}); pass --dicomweb-ca FILE with its CA"
                ) from e
            raise RemoteError(f"cannot reach {self.url} to {what}: {first_line(e)}") from e
        except httpx.TimeoutException as e:
            raise RemoteError(f"{self.url} did not answer in time to {what}") from e
        except httpx.HTTPError as e:
            raise RemoteError(f"cannot {what} at {self.url}: {first_line(e)}") from e

    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code in (401, 403):
            raise AuthenticationError(
                f"{self.url} refused the credentials given (HTTP {r.status_code}) to {what}: "
                "check the user (URL or --dicomweb-user) and PNEUMO_DICOMWEB_PASSWORD, or "
                "PNEUMO_DICOMWEB_TOKEN"
            )
        if not 200 <= r.status_code < 300:
            raise RemoteError(f"{self.url} answered HTTP {r.status_code} to {what}")


class _Answer:
    """A response that is closed when the `with` block ends, streamed or not."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def __enter__(self) -> httpx.Response:
        return self.response

    def __exit__(self, *exc: object) -> None:
        self.response.close()


def _bounded(r: httpx.Response, limit: int, what: str) -> bytes:
    """The body, read up to `limit` bytes (decompressed): over it, an ImageError."""
    declared = r.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit and "content-encoding" not in r.headers:
        raise ImageError(f"{what} is {int(declared) / MB:.0f} MB, over the {limit // MB} MB limit")
    body = bytearray()
    try:
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise ImageError(f"{what} is over the {limit // MB} MB limit: not read further")
    except httpx.HTTPError as e:
        raise RemoteError(f"reading {what} failed: {first_line(e)}") from e
    return bytes(body)


def _found(attributes: object) -> Found | None:
    if not isinstance(attributes, dict):
        return None
    uids = [value(attributes, tag) for tag in (STUDY, SERIES, SOP)]
    if not all(uids):
        return None
    return Found(uids[0] or "", uids[1] or "", uids[2] or "", attributes)


def _verify(ca_file: str | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"--dicomweb-ca {ca_file}: not a readable PEM CA file ({e})") from e
