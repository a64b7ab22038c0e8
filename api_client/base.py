"""What `JobClient` and `SyncJobClient` hold alike: the settings, the database (an asyncpg pool;
a psycopg pool or SQLAlchemy engine), the AWS clients and what is known of the queues. Each
client adds only the runner of its driver and its own (async or blocking) methods."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from api_client.admin import Queues
from api_client.settings import ClientSettings

DatabaseT = TypeVar("DatabaseT")
SqsT = TypeVar("SqsT")
S3T = TypeVar("S3T")
EcsT = TypeVar("EcsT")


class ClientBase(Generic[DatabaseT, SqsT, S3T, EcsT]):
    def __init__(
        self,
        settings: ClientSettings,
        database: DatabaseT,
        sqs: SqsT,
        s3: S3T | None = None,
        *,
        ecs: EcsT | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.sqs = sqs
        self.s3 = s3
        self.ecs = ecs  # set when ECS_CLUSTER/ECS_SERVICE name the worker service (health)
        self._queues = Queues(settings)
        self._setup()

    def _setup(self) -> None:
        """The client's driver and runner (each client's own)."""
        raise NotImplementedError

    @property
    def aws(self) -> dict[str, Any]:
        """The AWS clients by service name, as the core's `Aws` steps name them."""
        return {"sqs": self.sqs, "s3": self.s3, "ecs": self.ecs}
