"""One behavioural suite for every AdapterStore: the local filesystem and a real S3 server.

The S3 store runs against moto in server mode (a real HTTP endpoint on 127.0.0.1), so the
code under test goes through boto3's whole network stack, multipart uploads included.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ConnectionClosedError
from moto.server import ThreadedMotoServer

from server.errors import NotFound, ServiceUnavailable
from server.storage import AdapterStore, open_store
from server.storage.local import LocalAdapterStore
from server.storage.s3 import S3AdapterStore

MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Fake credentials, and no chance of reading the developer's real AWS config."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_SESSION_TOKEN", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/flaas-test-aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/flaas-test-aws-credentials")
        mp.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture(scope="session")
def s3_endpoint(aws_env: None) -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3_url(endpoint: str, bucket: str, prefix: str = "adapters", **extra: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"endpoint_url": endpoint, **extra}.items())
    return f"s3://{bucket}/{prefix}?{query}&region=us-east-1"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AdapterStore:
    if request.param == "local":
        return open_store(f"file://{tmp_path / 'adapters'}")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"flaas-{uuid.uuid4().hex[:12]}"
    s3 = open_store(_s3_url(endpoint, bucket, staging_dir=str(tmp_path / "staging")))
    assert isinstance(s3, S3AdapterStore)
    # A small multipart threshold so that the multipart path is exercised with a few MiB.
    s3._transfer = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.ensure_bucket()
    return s3


KEY = "jobs/j1/rounds/00001/updates/c1-0123456789abcdef.safetensors"


def test_satisfies_the_protocol(store: AdapterStore) -> None:
    assert isinstance(store, AdapterStore)
    store.check()


def test_put_bytes_then_read_back_every_way(store: AdapterStore) -> None:
    data = bytes(range(256)) * 1000
    store.put_bytes(KEY, data)
    assert store.exists(KEY)
    assert store.size(KEY) == len(data)
    assert store.get_bytes(KEY) == data
    chunks = list(store.iter_chunks(KEY, chunk_size=4096))
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= 4096 for c in chunks)
    with store.local_path(KEY) as path:
        assert path.read_bytes() == data


def test_put_bytes_overwrites(store: AdapterStore) -> None:
    store.put_bytes(KEY, b"old")
    store.put_bytes(KEY, b"new!")
    assert store.get_bytes(KEY) == b"new!"


def test_put_file_consumes_the_staging_file(store: AdapterStore) -> None:
    data = b"\x01\x02" * (3 * MiB)  # 6 MiB: multipart on S3
    with store.staging_file() as staged:
        assert staged.exists() and staged.stat().st_size == 0
        staged.write_bytes(data)
        store.put_file(KEY, staged)
        assert not staged.exists()
    assert store.get_bytes(KEY) == data


def test_staging_file_is_removed_when_not_consumed(store: AdapterStore) -> None:
    with store.staging_file() as staged:
        staged.write_bytes(b"partial upload")
    assert not staged.exists()
    assert not store.exists(KEY)


def test_staging_file_is_removed_on_error(store: AdapterStore) -> None:
    with pytest.raises(RuntimeError), store.staging_file() as staged:
        staged.write_bytes(b"partial upload")
        raise RuntimeError("client went away")
    assert not staged.exists()


def test_missing_key_is_not_found(store: AdapterStore) -> None:
    assert not store.exists(KEY)
    with pytest.raises(NotFound):
        store.get_bytes(KEY)
    with pytest.raises(NotFound):
        store.size(KEY)
    with pytest.raises(NotFound):
        store.iter_chunks(KEY)  # raised eagerly, before iteration
    with pytest.raises(NotFound), store.local_path(KEY):
        pass


def test_a_directory_prefix_is_not_a_blob(store: AdapterStore) -> None:
    store.put_bytes(KEY, b"x")
    assert not store.exists("jobs/j1")
    with pytest.raises(NotFound):
        store.get_bytes("jobs/j1")


def test_delete_is_idempotent(store: AdapterStore) -> None:
    store.put_bytes(KEY, b"x")
    store.delete(KEY)
    assert not store.exists(KEY)
    store.delete(KEY)


def test_local_path_copy_is_removed_on_exit(store: AdapterStore) -> None:
    store.put_bytes(KEY, b"blob")
    with store.local_path(KEY) as path:
        assert path.read_bytes() == b"blob"
    # The local store hands out the blob itself; a remote store's copy must be gone.
    assert path.exists() == isinstance(store, LocalAdapterStore)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/abs/key",
        "a/../b",
        "..",
        "a/./b",
        "a//b",
        "a/b/",
        ".staging/x",
        "a b",
        "a\\b",
        "é",
        "a?b",
        "x" * 401,
    ],
)
def test_invalid_keys_are_refused_before_any_io(store: AdapterStore, bad: str) -> None:
    for call in (
        lambda: store.put_bytes(bad, b"x"),
        lambda: store.get_bytes(bad),
        lambda: store.exists(bad),
        lambda: store.size(bad),
        lambda: store.delete(bad),
        lambda: store.iter_chunks(bad),
    ):
        with pytest.raises(ValueError):
            call()


def test_failed_put_file_leaves_no_blob_and_keeps_the_source(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isinstance(store, LocalAdapterStore):

        def broken_replace(src: object, dst: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr("server.storage.local.os.replace", broken_replace)
        expected: type[Exception] = OSError
    else:
        # Fail the second part of a multipart upload: the first part already reached S3.
        assert isinstance(store, S3AdapterStore)
        client = store._client
        real_upload_part = client.upload_part
        calls = []

        def flaky_upload_part(**kwargs: object) -> object:
            calls.append(kwargs["PartNumber"])
            if kwargs["PartNumber"] == 2:
                raise ConnectionClosedError(endpoint_url=store.endpoint_url or "")
            return real_upload_part(**kwargs)

        monkeypatch.setattr(client, "upload_part", flaky_upload_part)
        expected = ServiceUnavailable
    data = b"z" * (11 * MiB)
    with store.staging_file() as staged:
        staged.write_bytes(data)
        with pytest.raises(expected):
            store.put_file(KEY, staged)
        assert staged.read_bytes() == data  # not consumed: the caller may retry
    assert not store.exists(KEY)
    if isinstance(store, S3AdapterStore):
        assert 2 in calls
        # s3transfer aborts the multipart upload, so no orphaned parts are billed.
        uploads = store._client.list_multipart_uploads(Bucket=store.bucket)
        assert not uploads.get("Uploads")


def test_failed_put_bytes_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalAdapterStore(tmp_path / "adapters")

    def broken_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr("server.storage.local.os.fsync", broken_fsync)
    with pytest.raises(OSError):
        store.put_bytes(KEY, b"data")
    assert not store.exists(KEY)
    assert list((tmp_path / "adapters" / ".staging").iterdir()) == []


def test_local_writes_are_renamed_complete_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalAdapterStore(tmp_path / "adapters")
    import server.storage.local as local_module

    real_replace = local_module.os.replace
    seen: list[tuple[bool, bytes]] = []

    def watching_replace(src: str, dst: str) -> None:
        # At the moment of the rename the target is absent and the temp file is complete.
        assert Path(src).parent == store.root / ".staging"  # same filesystem as the target
        seen.append((Path(dst).exists(), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(local_module.os, "replace", watching_replace)
    store.put_bytes(KEY, b"complete")
    assert seen == [(False, b"complete")]


def test_readers_never_see_a_partial_blob(store: AdapterStore) -> None:
    size = 6 * MiB
    store.put_bytes(KEY, b"a" * size)
    observed: set[tuple[int, bytes]] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            blob = store.get_bytes(KEY)
            observed.add((len(blob), bytes(set(blob))))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for letter in b"bcd":
            with store.staging_file() as staged:
                staged.write_bytes(bytes([letter]) * size)
                store.put_file(KEY, staged)
    finally:
        stop.set()
        thread.join()
    assert observed <= {(size, bytes([c])) for c in b"abcd"}
    assert store.get_bytes(KEY) == b"d" * size


def test_local_put_file_from_another_directory(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path / "adapters")
    source = tmp_path / "elsewhere.bin"
    source.write_bytes(b"payload")
    store.put_file(KEY, source)
    assert not source.exists()
    assert (tmp_path / "adapters" / KEY).read_bytes() == b"payload"


def test_relative_file_url_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file://./flaas-data/adapters")
    assert isinstance(store, LocalAdapterStore)
    assert store.root == tmp_path / "flaas-data" / "adapters"
    store.put_bytes(KEY, b"x")
    assert (tmp_path / "flaas-data" / "adapters" / KEY).is_file()


def test_local_check_fails_when_root_is_gone(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path / "adapters")
    (tmp_path / "adapters" / ".staging").rmdir()
    (tmp_path / "adapters").rmdir()
    with pytest.raises(ServiceUnavailable, match="does not exist"):
        store.check()


def test_s3_check_fails_for_a_missing_bucket(s3_endpoint: str) -> None:
    store = open_store(_s3_url(s3_endpoint, f"missing-{uuid.uuid4().hex[:8]}"))
    with pytest.raises(ServiceUnavailable, match="does not exist"):
        store.check()


def test_s3_check_fails_for_an_unreachable_endpoint(aws_env: None) -> None:
    store = open_store(_s3_url(f"http://127.0.0.1:{_free_port()}", "bucket"))
    with pytest.raises(ServiceUnavailable, match="unreachable"):
        store.check()
    with pytest.raises(ServiceUnavailable):
        store.get_bytes(KEY)


def test_s3_prefix_isolates_stores(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"flaas-{uuid.uuid4().hex[:12]}"
    one = open_store(_s3_url(s3_endpoint, bucket, prefix="one"))
    two = open_store(_s3_url(s3_endpoint, bucket, prefix="two/nested"))
    assert isinstance(one, S3AdapterStore)
    one.ensure_bucket()
    one.put_bytes(KEY, b"1")
    assert not two.exists(KEY)
    keys = [o["Key"] for o in one._client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"one/{KEY}"]


@pytest.mark.parametrize(
    "url",
    ["ftp://x/y", "file://", "s3://bucket?bogus=1", "memory://"],
)
def test_open_store_refuses_bad_urls(url: str, aws_env: None) -> None:
    with pytest.raises(ValueError):
        open_store(url)
