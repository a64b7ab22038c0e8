"""The producer's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from api_client.errors import ClientConfigError
from jobcore.aws import AwsOptions
from jobcore.env import EnvReader


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
        reader = EnvReader(environ)
        for name in required:
            reader.required(name)
        settings = cls(
            database_url=reader.text("DATABASE_URL", ""),
            queue_url=reader.text("SQS_QUEUE_URL", ""),
            source_bucket=reader.optional("SOURCE_BUCKET"),
            aws_region=reader.text("AWS_REGION", reader.text("AWS_DEFAULT_REGION", "us-east-1")),
            aws_endpoint_url=reader.optional("AWS_ENDPOINT_URL"),
            dlq_url=reader.optional("SQS_DLQ_URL"),
            connect_timeout=reader.duration("CLIENT_CONNECT_TIMEOUT_SECONDS", 10.0, above=0),
            aws_max_attempts=reader.integer("AWS_MAX_ATTEMPTS", 3, low=1),
            ecs_cluster=reader.optional("ECS_CLUSTER"),
            ecs_service=reader.optional("ECS_SERVICE"),
        )
        reader.check(config_error)
        return settings

    def aws_options(self) -> AwsOptions:
        """The producer's AWS clients (`jobcore.aws.aws_client` / `sync_aws_client`)."""
        return AwsOptions(
            region=self.aws_region,
            endpoint_url=self.aws_endpoint_url,
            connect_timeout=self.connect_timeout,
            read_timeout=max(30.0, self.connect_timeout),
            max_attempts=self.aws_max_attempts,
        )


def config_error(problems: list[str]) -> ClientConfigError:
    """The producer's settings problems as one error on one line (the CLI prints one line)."""
    return ClientConfigError("; ".join(problems))
