"""The contract the worker and the producer share: job rows and their SQL, recipes, cancel, the
NOTIFY payload, job-finished events, SQS messages and batches, S3 names and error codes, settings
rules, AWS clients and checks."""
