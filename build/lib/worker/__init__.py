"""Background-removal worker: SQS -> S3 -> rembg -> S3, job state in PostgreSQL."""
