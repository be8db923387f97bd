"""An S3 endpoint for the storage tests: moto's S3 server on a local port, reached through s3fs.

The stores then go through the same code path as on AWS or any S3-compatible service (zarr's
FsspecStore over s3fs's async client, real HTTP requests and S3 error codes); only the endpoint
differs, set the way a user points at MinIO or another service: ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs", reason="the s3 extra is not installed")
    server_module = pytest.importorskip("moto.server", reason="moto is not installed")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty bucket; yields its ``s3://`` URL."""
    import fsspec.asyn
    import s3fs
    import zarr.core.sync

    # Only the local server: no endpoint, profile, token or proxy of the environment applies.
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"iris-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    yield f"s3://{bucket}"
    # Close the clients this test opened (their HTTP sessions would be reported as leaked).
    try:
        for fs in list(s3fs.S3FileSystem._cache.values()):
            client = getattr(fs, "_s3", None)
            if client is None:
                continue
            with contextlib.suppress(Exception):
                if fs.asynchronous:  # zarr's: runs on zarr's event loop
                    zarr.core.sync.sync(client.close())
                else:
                    fsspec.asyn.sync(fs.loop, client.close)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
