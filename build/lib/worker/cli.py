"""`image-worker`: run the daemon, migrate the schema, fetch model weights, health-check, or check
a deployment once (`selfcheck`). (The embedded local stack is dev-only: `make dev` runs
`python -m devstack`.)"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import structlog

from jobcore.log_setup import configure_logging
from worker.memory import tune_malloc
from worker.settings import Settings, SettingsError

EXIT_CONFIG = 2
EXIT_START_FAILED = 3

# What the `worker` extra brings (import names); a producer-only install has none of them.
WORKER_MODULES = ("aiohttp", "numpy", "onnx", "onnxruntime", "PIL", "prometheus_client", "rembg")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image-worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the worker daemon (settings from the environment)")
    commands.add_parser("migrate", help="apply database migrations (DATABASE_URL)")
    models = commands.add_parser("models", help="manage model weights")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    fetch = models_commands.add_parser("fetch", help="put model weights into U2NET_HOME")
    fetch.add_argument("name", nargs="?", default=os.environ.get("MODEL_NAME", "u2netp"))
    check = commands.add_parser(
        "selfcheck",
        help="check model, database, queue, DLQ and buckets once; exit 0 or 3 (deploy gate)",
    )
    check.add_argument("--source-bucket", help="also prove ListBucket on the source bucket")
    check.add_argument("--source-prefix", default="", help="key prefix of the source photos")
    health = commands.add_parser("healthcheck", help="exit 0 if /healthz answers OK, else 1")
    health.add_argument("--url", default=None, help="default: http://127.0.0.1:$METRICS_PORT")
    args = parser.parse_args(argv)

    if args.command in ("run", "models", "selfcheck"):
        missing = [name for name in WORKER_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            print(
                f"image-worker: the worker's dependencies are not installed ({', '.join(missing)}"
                " missing): install image-worker[worker,gpu] or image-worker[worker,cpu]",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    if args.command == "run":
        return _run()
    if args.command == "migrate":
        return _migrate()
    if args.command == "models":
        return _fetch_model(args.name)
    if args.command == "selfcheck":
        return _selfcheck(args.source_bucket, args.source_prefix)
    return _healthcheck(args.url)


def _run() -> int:
    malloc = tune_malloc()  # before any thread starts
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"image-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    structlog.get_logger("worker").debug("malloc tuned", **malloc)
    # Imported here, not at the top: without the `worker` extra this module must still load, so
    # that `main` can name what is missing instead of failing with an ImportError.
    import asyncpg

    from worker.app import WorkerApp
    from worker.completion_hook import CompletionHookMissing
    from worker.weights import ModelUnavailable

    async def serve() -> int:
        app = WorkerApp(settings)
        install_stop_signals(app.stop_requested)
        try:
            await app.run()
        except (ModelUnavailable, CompletionHookMissing) as exc:
            structlog.get_logger("worker").error("cannot start", reason=str(exc))
            return EXIT_START_FAILED
        except (OSError, asyncpg.PostgresError) as exc:
            if app.ready.is_set():
                raise
            reason = f"a dependency is unreachable: {type(exc).__name__}: {exc}"
            structlog.get_logger("worker").error("cannot start", reason=reason)
            return EXIT_START_FAILED
        if app.model is not None and app.model.abandoned_runs:
            # Everything is closed; only threads stuck inside ONNX Runtime remain, and a normal
            # exit would join them (forever, or until ECS's SIGKILL).
            structlog.get_logger("worker").warning(
                "exiting without the stuck model runs", runs=app.model.abandoned_runs
            )
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return 0

    return asyncio.run(serve())


def install_stop_signals(stop: asyncio.Event) -> None:
    """First SIGTERM/SIGINT: stop receiving and drain. Second: exit at once."""
    loop = asyncio.get_running_loop()
    log = structlog.get_logger("worker")

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("stop requested: draining", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def _selfcheck(source_bucket: str | None, source_prefix: str) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"image-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, "warning")
    from worker import selfcheck

    return selfcheck.main(settings, selfcheck.Targets(source_bucket, source_prefix))


def _migrate() -> int:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        print("image-worker: DATABASE_URL is required but not set", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("console", "info")
    from worker.migrate import migrate_url

    applied = asyncio.run(migrate_url(url))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def _fetch_model(name: str) -> int:
    from worker.weights import ModelUnavailable, fetch_model

    home = Path(os.environ.get("U2NET_HOME", str(Path.home() / ".u2net"))).expanduser()
    try:
        path = fetch_model(home, name)
    except ModelUnavailable as exc:
        print(f"image-worker: {exc}", file=sys.stderr)
        return 1
    print(f"model {name} ready at {path}")
    return 0


def _healthcheck(url: str | None) -> int:
    port = os.environ.get("METRICS_PORT", "9100")
    target = url or f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(target, timeout=3) as response:  # noqa: S310 - local URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"image-worker: health check failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
