"""S3 BlobStore (AWS, SeaweedFS, MinIO): one object per blob under ``prefix + relative_path``.

Why this shape:
- Object names come only from ``keys.relative_path`` after ``keys.validate``.
- ``put_file`` streams the staging file and sends ``If-None-Match: *`` so a second upload of the
  same content never rewrites the object, and ``ChecksumSHA256`` so the server refuses bytes
  that do not match the hash (nothing wrong is ever installed). Servers without conditional
  writes fall back to a HEAD check, which is safe because the key is the content's hash.
- Every botocore failure becomes NotFound, ArchivedError or StorageError, with messages naming
  the operation, key and S3 error code only (never the endpoint's credentials).
- Tiers are storage classes: "cold" copies the object onto itself with ``cold_storage_class``,
  keeping its metadata (SeaweedFS refuses a plain self-copy, so MetadataDirective=REPLACE).
  Archive classes (GLACIER, DEEP_ARCHIVE) need ``request_restore`` before they can be read.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.storage import keys
from app.storage.base import ARCHIVE_CLASSES, ArchivedError, BlobInfo, NotFound, StorageError
from app.storage.local import path_prefix

STANDARD = "STANDARD"
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
ARCHIVED_CODES = frozenset({"InvalidObjectState", "ObjectNotInActiveTierError"})
DIGEST_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
COPIED_HEADERS = (
    "ContentType",
    "CacheControl",
    "ContentDisposition",
    "ContentEncoding",
    "ContentLanguage",
)
_ONGOING_RE = re.compile(r'ongoing-request="(true|false)"')


def make_client(
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    max_pool_connections: int = 32,
    max_attempts: int = 5,
) -> Any:
    """A thread-safe S3 client tuned for an origin: bounded retries and timeouts, path style.

    Checksums are sent only when required or when we pass one (``ChecksumSHA256`` on
    originals): botocore's default of adding CRC32 everywhere breaks some S3-compatible servers.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=5,
        read_timeout=30,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        max_pool_connections=max_pool_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A private session: boto3's default session is not safe to share across threads.
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


def _error_code(exc: ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _fail(op: str, key: str, exc: Exception) -> StorageError:
    """Map a botocore error to our hierarchy without echoing request details."""
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        if code in MISSING_CODES:
            return NotFound(key)
        return StorageError(f"s3 {op} {key}: {code or 'HTTP'} ({status})")
    return StorageError(f"s3 {op} {key}: {type(exc).__name__}")


class _Stream(io.RawIOBase):
    """A GetObject body whose network errors surface as StorageError, like every other call."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except (BotoCoreError, OSError) as exc:
            raise _fail("read", self._key, exc) from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3BlobStore:
    """BlobStore on an S3 bucket; see the module docstring for naming, writes and tiers."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        cold_storage_class: str = "GLACIER_IR",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.cold_storage_class = cold_storage_class
        self.client = client if client is not None else make_client(endpoint_url, region)
        self._conditional_writes = True  # cleared if the server answers 501 to If-None-Match

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _name(self, key: str) -> str:
        return self.prefix + keys.relative_path(keys.validate(key))

    def _head(self, key: str) -> dict[str, Any]:
        name = self._name(key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError) as exc:
            raise _fail("head", key, exc) from exc

    # --- writes -----------------------------------------------------------------------------
    def put_file(
        self,
        key: str,
        path: str,
        sha256_hex: str | None = None,
        *,
        alongside: Callable[[], object] | None = None,
    ) -> bool:
        """Upload ``path`` under ``key`` unless an object is there; True if written.

        ``alongside`` runs before the upload (there is no wait of ours to hide it in: boto3's
        upload needs the GIL that a check would hold); if it raises, nothing is uploaded.
        """
        name = self._name(key)
        extra: dict[str, Any] = {}
        if sha256_hex is not None:
            try:
                digest = bytes.fromhex(sha256_hex)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise StorageError(f"s3 put {key}: sha256_hex is not a SHA-256 digest")
            extra["ChecksumSHA256"] = base64.b64encode(digest).decode("ascii")
        if self._conditional_writes:
            extra["IfNoneMatch"] = "*"
        elif self.exists(key):
            return False
        if alongside is not None:
            alongside()
        try:
            fh = open(path, "rb")  # closed by the with below, after the upload
        except OSError as exc:
            raise StorageError(f"s3 put {key}: cannot read source: {exc.strerror}") from exc
        try:
            with fh:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=fh, **extra)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code == "PreconditionFailed" or status == 412:
                return False
            if code == "ConditionalRequestConflict" and self.exists(key):
                return False  # a concurrent writer of the same content won
            if (status == 501 or code == "NotImplemented") and self._conditional_writes:
                self._conditional_writes = False
                return self.put_file(key, path, sha256_hex)  # alongside has run
            if code in DIGEST_CODES:
                raise StorageError(f"s3 put {key}: sha256 mismatch; nothing stored") from exc
            raise _fail("put", key, exc) from exc
        except BotoCoreError as exc:
            raise _fail("put", key, exc) from exc
        return True

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        name = self._name(key)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(data), **extra)
        except (ClientError, BotoCoreError) as exc:
            raise _fail("put", key, exc) from exc

    # --- reads ------------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        name = self._name(key)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _error_code(exc)[0] in ARCHIVED_CODES:
                raise ArchivedError(key, restoring=self._restoring(key)) from exc
            raise _fail("get", key, exc) from exc
        except BotoCoreError as exc:
            raise _fail("get", key, exc) from exc
        return io.BufferedReader(_Stream(resp["Body"], key), buffer_size=256 * 1024)

    def _restoring(self, key: str) -> bool:
        try:
            return self.restore_status(key)[1] is True
        except StorageError:
            return False

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except NotFound:
            return False
        return True

    def info(self, key: str) -> BlobInfo:
        head = self._head(key)
        storage_class = head.get("StorageClass") or STANDARD
        return BlobInfo(key, int(head["ContentLength"]), head["LastModified"], storage_class)

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError) as exc:
            err = _fail("delete", key, exc)
            if not isinstance(err, NotFound):
                raise err from exc

    def iter_blobs(self, prefix: str = "") -> Iterator[BlobInfo]:
        rel = path_prefix(prefix)
        if rel is None:
            return
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + rel):
                for obj in page.get("Contents", ()):
                    key = keys.key_from_relative_path(obj["Key"][len(self.prefix) :])
                    if key is None or not key.startswith(prefix):
                        continue
                    storage_class = obj.get("StorageClass") or STANDARD
                    yield BlobInfo(key, int(obj["Size"]), obj["LastModified"], storage_class)
        except (ClientError, BotoCoreError) as exc:
            raise _fail("list", prefix or "*", exc) from exc

    def ping(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            code = _error_code(exc)[0] if isinstance(exc, ClientError) else type(exc).__name__
            raise StorageError(f"s3 bucket {self.bucket}: {code}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (tests, ``make run`` against a local S3)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc)[0] not in MISSING_CODES | {"NoSuchBucket"}:
                raise StorageError(f"s3 bucket {self.bucket}: {_error_code(exc)[0]}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"s3 bucket {self.bucket}: {type(exc).__name__}") from exc
        extra: dict[str, Any] = {}
        region = self.client.meta.region_name
        if region and region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:
            if _error_code(exc)[0] != "BucketAlreadyOwnedByYou":
                raise StorageError(f"s3 bucket {self.bucket}: {_error_code(exc)[0]}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"s3 bucket {self.bucket}: {type(exc).__name__}") from exc

    # --- tiers ------------------------------------------------------------------------------
    def set_tier(self, key: str, tier: str) -> None:
        """Change the storage class: "cold" -> ``cold_storage_class``, "hot" -> STANDARD.

        An archived object must be restored before it can go back to "hot" (ArchivedError).
        """
        if tier not in ("hot", "cold"):
            raise ValueError(f"tier must be 'hot' or 'cold', not {tier!r}")
        target = self.cold_storage_class if tier == "cold" else STANDARD
        head = self._head(key)
        if (head.get("StorageClass") or STANDARD) == target:
            return
        name = self._name(key)
        extra = {h: head[h] for h in COPIED_HEADERS if head.get(h)}
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=name,
                CopySource={"Bucket": self.bucket, "Key": name},
                StorageClass=target,
                MetadataDirective="REPLACE",
                Metadata=head.get("Metadata") or {},
                **extra,
            )
        except ClientError as exc:
            if _error_code(exc)[0] in ARCHIVED_CODES:
                raise ArchivedError(key, restoring=self._restoring(key)) from exc
            raise _fail("copy", key, exc) from exc
        except BotoCoreError as exc:
            raise _fail("copy", key, exc) from exc

    def request_restore(self, key: str, days: int = 1, tier: str = "Standard") -> str:
        """Ask for a temporary readable copy of an archived object.

        Returns "started" (202: restore begun), "restored" (200: a restored copy exists, or the
        object is in a class that needs no restore) or "in_progress" (409: already asked).
        """
        name = self._name(key)
        request = {"Days": days, "GlacierJobParameters": {"Tier": tier}}
        try:
            resp = self.client.restore_object(Bucket=self.bucket, Key=name, RestoreRequest=request)
        except ClientError as exc:
            code = _error_code(exc)[0]
            if code == "RestoreAlreadyInProgress":
                return "in_progress"
            if code == "InvalidObjectState" and self.restore_status(key)[0] not in ARCHIVE_CLASSES:
                return "restored"
            raise _fail("restore", key, exc) from exc
        except BotoCoreError as exc:
            raise _fail("restore", key, exc) from exc
        status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 202))
        return "restored" if status == 200 else "started"

    def restore_status(self, key: str) -> tuple[str, bool | None]:
        """(storage class, ongoing): ongoing is None when no restore was ever asked for."""
        head = self._head(key)
        match = _ONGOING_RE.search(head.get("Restore") or "")
        ongoing = None if match is None else match.group(1) == "true"
        return head.get("StorageClass") or STANDARD, ongoing


__all__ = ["S3BlobStore", "make_client"]
