"""The producer's settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from api_client.errors import ClientConfigError


@dataclass(frozen=True, slots=True)
class ClientSettings:
    database_url: str
    queue_url: str
    source_bucket: str | None
    aws_region: str
    aws_endpoint_url: str | None
    dlq_url: str | None = None
    connect_timeout: float = 10.0  # database and AWS connect timeout, seconds
    aws_max_attempts: int = 3  # botocore "standard" retry mode: total tries per call
    ecs_cluster: str | None = None  # with ecs_service: check_health reports the worker service
    ecs_service: str | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        required: Sequence[str] = ("DATABASE_URL", "SQS_QUEUE_URL"),
    ) -> ClientSettings:
        env = os.environ if environ is None else environ
        missing = [name for name in required if not env.get(name)]
        if missing:
            raise ClientConfigError(f"{' and '.join(missing)} must be set")
        return cls(
            database_url=env.get("DATABASE_URL", ""),
            queue_url=env.get("SQS_QUEUE_URL", ""),
            source_bucket=env.get("SOURCE_BUCKET") or None,
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            dlq_url=env.get("SQS_DLQ_URL") or None,
            connect_timeout=_positive(env, "CLIENT_CONNECT_TIMEOUT_SECONDS", 10.0),
            aws_max_attempts=int(_positive(env, "AWS_MAX_ATTEMPTS", 3)),
            ecs_cluster=env.get("ECS_CLUSTER") or None,
            ecs_service=env.get("ECS_SERVICE") or None,
        )

    def boto_kwargs(self) -> dict[str, Any]:
        """What every AWS client of the producer is made with (aioboto3 or boto3)."""
        return {
            "endpoint_url": self.aws_endpoint_url,
            "region_name": self.aws_region,
            "config": self.boto_config(),
        }

    def boto_config(self) -> Config:
        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=max(30.0, self.connect_timeout),
            retries={"mode": "standard", "max_attempts": self.aws_max_attempts},
        )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ClientConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ClientConfigError(f"{name} must be positive, got {raw!r}")
    return value
