"""Observability against real parts: promtool on the alert rules and on a real worker's /metrics,
and every Grafana panel query through a real Prometheus scraping a real worker doing real jobs."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from api_client.client import JobClient
from jobcore.jobs import JobStatus
from tests.conftest import Aws, StartWorker
from tests.helpers import eventually, synthetic_scene, unused_port, wait_finished

pytestmark = pytest.mark.slow  # a real Prometheus scraping a real worker doing real jobs

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERT_TESTS = RULES_DIR / "alerts.test.yml"
SCRAPE_CONFIG = RULES_DIR / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "image-worker.json"
JOB = "image-worker"  # the scrape job name the rules select

# What Grafana would put in place of the template variables. With a 1 s scrape interval a one
# minute window holds plenty of samples, and the jobs below all finish inside it.
VARIABLES = {
    "job": JOB,
    "instance": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


# ------------------------------------------------------------------ tools


def _install_system_deps() -> None:
    """Debian's prometheus package, as `make system-deps` installs it (root and apt only)."""
    if os.geteuid() == 0 and shutil.which("apt-get") and shutil.which("make"):
        subprocess.run(["make", "-s", "system-deps"], cwd=REPO, check=False, timeout=600)


@pytest.fixture(scope="session")
def prometheus_bin() -> tuple[str, str]:
    """(prometheus, promtool) paths."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        _install_system_deps()
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prometheus and promtool):
        pytest.fail("prometheus/promtool missing: run `make system-deps` (Debian package)")
    return prometheus, promtool


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ rules


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_and_unit_tests_the_rules(prometheus_bin: tuple[str, str]) -> None:
    _, promtool = prometheus_bin
    check = _run([promtool, "check", "rules", str(ALERTS)])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    assert "WARNING" not in check.stdout + check.stderr, check.stdout + check.stderr

    unit = _run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout

    config = _run([promtool, "check", "config", str(SCRAPE_CONFIG)])
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_a_runbook_and_fires_and_stays_quiet_in_a_unit_test() -> None:
    alerts = _alerts()
    names = {rule["alert"] for rule in alerts}
    assert names >= {
        "ImageWorkerQueueNotDraining",
        "ImageWorkerDlqNotEmpty",
        "ImageWorkerFailureRatioHigh",
        "ImageWorkerNotPolling",
        "ImageWorkerRunningOnCpu",
        "ImageWorkerNoWorkersWithWork",
    }
    docs = (REPO / "docs" / "observability.md").read_text().lower()
    for rule in alerts:
        annotations = rule["annotations"]
        assert annotations.get("summary"), rule["alert"]
        runbook = annotations.get("runbook", "")
        assert runbook.startswith(f"docs/observability.md#{rule['alert'].lower()}:"), runbook
        assert f"### {rule['alert'].lower()}" in docs, f"{rule['alert']} has no runbook section"
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]

    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires >= names, f"no firing case for {sorted(names - fires)}"
    assert quiet >= names, f"no quiet case for {sorted(names - quiet)}"


# ------------------------------------------------------------------ dashboard


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, expr) for every query target of every panel."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in VARIABLES:
            raise KeyError(f"unknown template variable {name!r} in {expr!r}")
        return VARIABLES[name]

    return VARIABLE.sub(value, expr)


def test_dashboard_is_an_importable_grafana_10_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["definition"].startswith("label_values(image_worker_model_info")
    assert instance["definition"].endswith(", instance)")
    assert instance["includeAll"]
    assert instance["multi"]

    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]

    text = json.dumps(dashboard)
    # The panels the dashboard must have, by the metric each one is built on.
    for metric in (
        "image_worker_jobs_total",
        "image_worker_end_to_end_seconds_bucket",
        "image_worker_stage_duration_seconds_bucket",
        "image_worker_jobs_in_flight",
        "image_worker_concurrency_limit",
        "image_worker_empty_receives_total",
        "image_worker_visibility_extensions_total",
        "image_worker_job_failures_total",
        "image_worker_model_load_seconds",
        "image_worker_model_info",
        "image_worker_queue_messages",
        "image_worker_oldest_pending_job_age_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert metric in text, f"no panel uses {metric}"
    for _, expr in _queries(dashboard):
        substitute(expr)  # every variable used is one the dashboard defines or Grafana provides
        if "image_worker_queue_messages" in expr or "oldest_pending" in expr:
            assert "sum(image_worker_queue" not in expr, "fleet-wide gauges aggregate with max"


# ------------------------------------------------------------------ real Prometheus


@dataclass
class Prometheus:
    url: str
    log: Path
    session: aiohttp.ClientSession

    async def api(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


StartPrometheus = Callable[[list[str]], Awaitable[Prometheus]]


@pytest.fixture
async def start_prometheus(
    prometheus_bin: tuple[str, str], tmp_path: Path
) -> AsyncIterator[StartPrometheus]:
    """Starts a real Prometheus on a free loopback port that scrapes the given targets every
    second and evaluates deploy/prometheus/alerts.yml; stops it at teardown."""
    prometheus, _ = prometheus_bin
    processes: list[asyncio.subprocess.Process] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def start(targets: list[str]) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        port = unused_port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                prometheus,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        server = Prometheus(f"http://127.0.0.1:{port}", log, session)

        async def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"prometheus exited:\n{server.log_tail()}")
            try:
                async with session.get(f"{server.url}/-/ready") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=30, interval=0.1)
        return server

    yield start
    for process in processes:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
    await session.close()


async def _fetch_metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def _process_jobs(producer: JobClient, aws: Aws) -> dict[str, JobStatus]:
    """Three good photos, one upload that is not an image, one job whose object is missing."""
    job_ids = {}
    for seed in range(3):
        scene, _ = synthetic_scene((320, 240), seed=seed)
        await aws.put(f"obs/scene-{seed}.jpg", scene)
        job_ids[f"scene-{seed}"] = (await producer.create_job(f"obs/scene-{seed}.jpg")).id
    await aws.put("obs/notes.txt", b"this is not an image")
    job_ids["not-an-image"] = (await producer.create_job("obs/notes.txt")).id
    job_ids["missing"] = (await producer.create_job("obs/never-uploaded.jpg")).id
    finished = await wait_finished(producer, job_ids.values(), timeout=120)
    return {name: finished[job_id].status for name, job_id in job_ids.items()}


async def test_worker_metrics_pass_promtool_lint(
    start_worker: StartWorker,
    producer: JobClient,
    aws: Aws,
    prometheus_bin: tuple[str, str],
) -> None:
    _, promtool = prometheus_bin
    worker = await start_worker(QUEUE_STATS_INTERVAL_SECONDS="1")
    statuses = await _process_jobs(producer, aws)
    assert list(statuses.values()).count(JobStatus.COMPLETED) == 3, statuses
    text = await _fetch_metrics(worker.url)
    for family in ("image_worker_job_failures_total", "image_worker_queue_messages"):
        assert family in text, f"{family} missing from /metrics"

    process = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(text.encode()), timeout=60)
    lint = output.decode().strip()
    assert not lint, f"promtool check metrics:\n{lint}"
    assert process.returncode == 0


async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    start_worker: StartWorker,
    start_prometheus: StartPrometheus,
    producer: JobClient,
    aws: Aws,
) -> None:
    worker = await start_worker(QUEUE_STATS_INTERVAL_SECONDS="1")
    target = f"127.0.0.1:{worker.app.port}"
    prometheus = await start_prometheus([target])

    # Prometheus must hold samples from before the jobs, or rate() over them is flat.
    async def scraped() -> bool:
        return await prometheus.value(f'up{{job="{JOB}", instance="{target}"}} == 1') == 1

    await eventually(scraped, timeout=30, interval=0.25)

    statuses = await _process_jobs(producer, aws)
    assert list(statuses.values()).count(JobStatus.COMPLETED) == 3, statuses
    assert statuses["not-an-image"] is JobStatus.FAILED
    assert statuses["missing"] is JobStatus.FAILED

    async def seen_everything() -> bool:
        completed = await prometheus.value('image_worker_jobs_total{outcome="completed"}')
        failed = await prometheus.value('image_worker_jobs_total{outcome="failed"}')
        queue = await prometheus.query('image_worker_queue_messages{queue="dlq"}')
        pending = await prometheus.value('image_worker_open_jobs{status="pending"}')
        # Series born at the first failure need two samples before rate() over them has data.
        failure_rates = await prometheus.query("rate(image_worker_job_failures_total[1m])")
        seen = completed == 3 and failed == 2 and bool(queue) and pending == 0
        return seen and bool(failure_rates)

    await eventually(seen_everything, timeout=30, interval=0.25)

    dashboard = _dashboard()
    problems: list[str] = []
    queries = _queries(dashboard)
    assert len(queries) >= 30, len(queries)
    for where, expr in queries:
        promql = substitute(expr)
        try:
            result = await prometheus.query(promql)
        except AssertionError as exc:
            problems.append(f"{where}: error {exc}")
            continue
        values = [float(sample["value"][1]) for sample in result]
        if not values:
            problems.append(f"{where}: no data for {promql}")
        elif not any(math.isfinite(v) for v in values):
            problems.append(f"{where}: only NaN/Inf {values} for {promql}")
    assert not problems, "\n".join(problems) + f"\n--- prometheus log:\n{prometheus.log_tail()}"

    # The template variables resolve to this worker (Grafana's label_values() is the label API).
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable.get("definition", ""))
        if match:
            selector, label = substitute(match.group(1)), match.group(2)
            values = await prometheus.api(f"label/{label}/values", **{"match[]": selector})
            expected = {"job": JOB, "instance": target}[label]
            assert expected in values, (variable["name"], values)

    # The rules load and evaluate cleanly against the real series, and nothing fires for a
    # healthy worker that has just finished its jobs.
    async def evaluated() -> list[dict[str, Any]] | None:
        groups = (await prometheus.api("rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(not rule["lastEvaluation"].startswith("0001") for rule in rules)
        return rules if rules and done else None

    rules = await eventually(evaluated, timeout=30, interval=0.25)
    assert rules is not None
    assert {rule["name"] for rule in rules} >= {alert["alert"] for alert in _alerts()}
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        if rule["type"] == "alerting":
            assert rule["state"] == "inactive", (rule["name"], rule.get("alerts"))

    # The recorded fleet-wide backlog follows the queue down to empty once every message is
    # deleted (the queue poll runs every second here).
    async def drained() -> bool:
        backlog = await prometheus.value("image_worker:queue_backlog:max")
        dlq = await prometheus.value("image_worker:dlq_messages:max")
        return backlog == 0 and dlq == 0

    await eventually(drained, timeout=20, interval=0.25)
