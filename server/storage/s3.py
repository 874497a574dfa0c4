"""Adapter store on an S3-compatible object store (production mode)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from server.errors import NotFound, ServiceUnavailable
from server.storage.base import DEFAULT_CHUNK_SIZE, staging_file_in, validate_key

_MISSING_KEY_CODES = {"404", "NoSuchKey", "NotFound"}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3AdapterStore:
    """Blobs as objects in ``bucket`` under ``prefix``.

    S3 makes an object visible only once its PUT (or multipart upload) completes, so writes
    are atomic without a rename. Credentials come from the standard boto3 chain.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        staging_dir: Path | None = None,
        transfer_config: TransferConfig | None = None,
        url: str | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 store needs a bucket name (s3://bucket/optional/prefix)")
        self.bucket = bucket
        self.prefix = validate_key(prefix.strip("/")) + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.url = url or f"s3://{bucket}/{self.prefix}"
        style = addressing_style or ("path" if endpoint_url else "auto")
        # Bounded timeouts and retries: a dead endpoint must fail readyz quickly, not hang.
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": style},
        )
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self._transfer = transfer_config or TransferConfig()
        self._staging = staging_dir or Path(tempfile.gettempdir()) / "flaas-staging"
        self._staging.mkdir(parents=True, exist_ok=True)

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Translate boto errors into domain errors: missing key -> NotFound, rest -> 503."""
        where = f"s3://{self.bucket}/{self.prefix}" + (key or "")
        try:
            yield
        except ClientError as error:
            if key is not None and _code(error) in _MISSING_KEY_CODES:
                raise NotFound(f"no adapter blob stored under {key!r}") from None
            raise ServiceUnavailable(f"object store request for {where} failed: {error}") from error
        except (BotoCoreError, S3UploadFailedError) as error:
            raise ServiceUnavailable(f"object store request for {where} failed: {error}") from error

    def put_file(self, key: str, source: Path) -> None:
        """Upload ``source`` (multipart and streamed when large), then delete it."""
        with self._errors():
            self._client.upload_file(
                str(source), self.bucket, self._key(key), Config=self._transfer
            )
        Path(source).unlink()

    def put_bytes(self, key: str, data: bytes) -> None:
        """One PUT of ``data``."""
        with self._errors():
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        with self._errors(key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(response["Body"].read())

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The object in chunks; the GET (and so ``NotFound``) happens before iteration."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        with self._errors(key):
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                with self._errors(key):
                    yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

        return chunks()

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """Download the object to a staging file, yield it, delete it on exit."""
        with self.staging_file() as path:
            with self._errors(key):
                self._client.download_file(
                    self.bucket, self._key(key), str(path), Config=self._transfer
                )
            yield path

    def exists(self, key: str) -> bool:
        """Whether the object exists (one HEAD request)."""
        try:
            self.size(key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        """The object's size in bytes (one HEAD request)."""
        with self._errors(key):
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        """Delete the object; S3 answers a missing key with success."""
        with self._errors():
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def check(self) -> None:
        """HEAD the bucket; a missing bucket is reported, never created here."""
        endpoint = self.endpoint_url or "the default AWS endpoint"
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if _code(error) in {"404", "NoSuchBucket", "NotFound"}:
                raise ServiceUnavailable(
                    f"bucket {self.bucket!r} does not exist at {endpoint}; create it first"
                ) from None
            raise ServiceUnavailable(
                f"bucket {self.bucket!r} at {endpoint} is not usable: {error}"
            ) from None
        except BotoCoreError as error:
            raise ServiceUnavailable(
                f"object store at {endpoint} is unreachable: {error}"
            ) from None

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, first-time setup scripts)."""
        with contextlib.suppress(ServiceUnavailable):
            self.check()
            return
        region = self._client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._errors():
            self._client.create_bucket(**kwargs)

    def staging_file(self) -> AbstractContextManager[Path]:
        """A fresh empty file in the local staging directory; removed on exit unless consumed."""
        return staging_file_in(self._staging)
