"""The one AWS-client factory: every SQS, S3, ECS ... client of the worker, the producer and the
deploy tooling is built here, so that they share one set of rules.

- endpoint: `AWS_ENDPOINT_URL` when set (moto, LocalStack), else AWS's own;
- region: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the caller's default;
- timeouts: every client has a connect and a read timeout (botocore's defaults are 60 s each; a
  long poll needs a read timeout longer than its wait);
- retries: botocore's `standard` mode with a bounded number of tries per call.

`aws_client` gives an aioboto3 client as an async context manager (it closes on exit);
`sync_aws_client` a boto3 client with the same `Config`, which the caller closes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from jobcore.env import EnvError, EnvReader

URL_PREFIXES = ("http://", "https://")


@dataclass(frozen=True, slots=True)
class AwsOptions:
    region: str | None = None  # None: botocore's own lookup (profile, instance metadata)
    endpoint_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 3  # total tries of one call, retries included
    max_pool_connections: int = 10

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, region: str | None = None
    ) -> AwsOptions:
        """AWS_ENDPOINT_URL and the region (`region`, else AWS_REGION, else AWS_DEFAULT_REGION);
        raises EnvError naming a bad variable."""
        reader = EnvReader(environ)
        options = cls(
            region=region or reader.optional("AWS_REGION") or reader.optional("AWS_DEFAULT_REGION"),
            endpoint_url=reader.optional("AWS_ENDPOINT_URL", prefix=URL_PREFIXES),
        )
        reader.check(EnvError)
        return options

    def _config_values(self) -> dict[str, Any]:
        return {
            "region_name": self.region,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "retries": {"mode": "standard", "max_attempts": self.max_attempts},
            "max_pool_connections": self.max_pool_connections,
        }

    def config(self) -> Config:
        """botocore's Config (boto3 clients)."""
        return Config(**self._config_values())

    def aio_config(self) -> Any:
        """aiobotocore's AioConfig (aioboto3 clients)."""
        from aiobotocore.config import AioConfig

        return AioConfig(**self._config_values())


@contextlib.asynccontextmanager
async def aws_client(
    service: str, options: AwsOptions, *, session: Any | None = None
) -> AsyncIterator[Any]:
    """An aioboto3 client for `service` (e.g. "sqs", "s3"), closed on exit. `session`: an
    `aioboto3.Session` to share (one is made otherwise)."""
    import aioboto3

    session = session if session is not None else aioboto3.Session()
    async with session.client(
        service,
        endpoint_url=options.endpoint_url,
        region_name=options.region,
        config=options.aio_config(),
    ) as client:
        yield client


def sync_aws_client(service: str, options: AwsOptions) -> Any:
    """A boto3 client for `service` with the same rules; the caller closes it (`.close()`)."""
    import boto3

    make: Any = boto3.client  # a service chosen at run time (the stubs type each literal)
    return make(
        service,
        endpoint_url=options.endpoint_url,
        region_name=options.region,
        config=options.config(),
    )
