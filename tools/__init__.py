"""Development tools the tests and the benchmarks share (never shipped): Terraform files as data."""
