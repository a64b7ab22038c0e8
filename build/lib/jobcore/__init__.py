"""The contract the worker and the producer share: job rows, SQS messages, S3 error codes."""
