"""The example's own settings (the producer's come from `ClientSettings.from_env`), read once at
startup; a bad value stops the start with a message naming the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

AttachMode = Literal["listener", "hook"]
ATTACH_MODES: tuple[AttachMode, ...] = ("listener", "hook")


class ExampleConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ExampleSettings:
    """`attach`: who attaches a finished cut-out to its book. `listener` (default): the app's
    background task hears each finished job (`JobClient.listen()`) and calls
    app.attach_processed_image, which works for an app on another database too. `hook`: the
    worker calls it itself inside the completing transaction (worker setting
    COMPLETION_HOOK=app.attach_processed_image; the app and the jobs share one database).
    `allowed_source_buckets`: the buckets a listing's photos may be copied from."""

    attach: AttachMode
    allowed_source_buckets: frozenset[str]

    @classmethod
    def from_env(cls, env: Mapping[str, str], source_bucket: str) -> ExampleSettings:
        value = env.get("ATTACH_PROCESSED_IMAGES", "listener").strip().lower()
        attach = next((mode for mode in ATTACH_MODES if mode == value), None)
        if attach is None:
            raise ExampleConfigError(
                f"ATTACH_PROCESSED_IMAGES={value!r}: expected one of {', '.join(ATTACH_MODES)}"
            )
        listed = env.get("ALLOWED_SOURCE_BUCKETS", "")
        buckets = frozenset(b.strip() for b in listed.split(",") if b.strip())
        return cls(attach, buckets or frozenset({source_bucket}))


def example_settings(source_bucket: str) -> ExampleSettings:
    return ExampleSettings.from_env(os.environ, source_bucket)
