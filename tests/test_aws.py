"""The one AWS-client factory (jobcore.aws): endpoint and region rules, timeouts and retries."""

from __future__ import annotations

from typing import Any

import pytest

from api_client.settings import ClientSettings
from jobcore.aws import AwsOptions, aws_client, sync_aws_client
from jobcore.env import EnvError
from tests.conftest import Aws
from worker.settings import Settings


def test_endpoint_and_region_come_from_the_environment() -> None:
    options = AwsOptions.from_env(
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_DEFAULT_REGION": "eu-west-1"}
    )
    assert (options.endpoint_url, options.region) == ("http://127.0.0.1:5000", "eu-west-1")
    both = {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert AwsOptions.from_env(both).region == "us-west-2"
    assert AwsOptions.from_env(both, region="ap-south-1").region == "ap-south-1"
    assert AwsOptions.from_env({}) == AwsOptions()


def test_a_bad_endpoint_names_the_variable() -> None:
    with pytest.raises(EnvError) as caught:
        AwsOptions.from_env({"AWS_ENDPOINT_URL": "localhost:5000"})
    assert caught.value.problems == ["AWS_ENDPOINT_URL must start with http:// or https://"]


def test_every_client_has_timeouts_and_bounded_standard_retries() -> None:
    options = AwsOptions(region="eu-west-1", connect_timeout=2, read_timeout=35, max_attempts=4)
    configs: list[Any] = [options.config(), options.aio_config()]  # botocore is untyped
    for config in configs:
        assert (config.connect_timeout, config.read_timeout) == (2, 35)
        assert config.retries == {"mode": "standard", "max_attempts": 4}
        assert config.region_name == "eu-west-1"


def test_the_workers_read_timeout_outlasts_its_long_poll() -> None:
    env = {"DATABASE_URL": "postgresql://u@h/db", "SQS_QUEUE_URL": "https://sqs.example/1/q"}
    options = Settings.from_env({**env, "WORKER_CONCURRENCY": "16"}).aws_options()
    assert options.read_timeout > 20  # WAIT_TIME_SECONDS
    assert options.max_pool_connections >= 32


def test_a_sync_client_gets_the_same_rules(aws: Aws) -> None:
    options = AwsOptions(region="us-east-1", endpoint_url=aws.endpoint, read_timeout=12)
    client = sync_aws_client("sqs", options)
    try:
        assert client.meta.endpoint_url == aws.endpoint
        assert client.meta.config.read_timeout == 12
        assert aws.queue_url in client.list_queues()["QueueUrls"]
    finally:
        client.close()


async def test_an_async_client_reaches_the_endpoint(aws: Aws) -> None:
    options = AwsOptions(region="us-east-1", endpoint_url=aws.endpoint)
    async with aws_client("sqs", options) as sqs:
        assert sqs.meta.config.connect_timeout == options.connect_timeout
        assert aws.queue_url in (await sqs.list_queues())["QueueUrls"]


def test_the_producers_clients_follow_its_settings() -> None:
    env = {
        "DATABASE_URL": "postgresql://u@h/db",
        "SQS_QUEUE_URL": "https://sqs.example/1/q",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "CLIENT_CONNECT_TIMEOUT_SECONDS": "45",
        "AWS_MAX_ATTEMPTS": "5",
    }
    options = ClientSettings.from_env(env).aws_options()
    assert options == AwsOptions(
        region="us-east-1",
        endpoint_url="http://127.0.0.1:5000",
        connect_timeout=45,
        read_timeout=45,
        max_attempts=5,
    )
