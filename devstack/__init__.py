"""Dev-only tooling (not shipped): the embedded local stack behind `make dev`, the tests and the
benchmark. Needs the `dev` extra (moto, pgserver, scikit-image)."""
