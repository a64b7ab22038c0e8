"""The producer side: create background-removal jobs and inspect them."""

from api_client.client import ClientSettings, JobClient

__all__ = ["ClientSettings", "JobClient"]
