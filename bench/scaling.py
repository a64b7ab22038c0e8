"""Autoscaling simulator: replays the service's scaling policies exactly as Terraform configures
them against load profiles, and a rollout at full scale under a sustained backlog.

The policy is READ, not copied: python-hcl2 parses terraform/variables.tf (defaults),
terraform/main.tf (locals such as the backlog-per-task target) and terraform/autoscaling.tf (the
target-tracking metric math, the scale-from-zero and scale-to-zero alarms, their step
adjustments and cooldowns), and a small evaluator computes the HCL expressions. "before" is the
same files as they were before the backlog-per-task fix, kept in bench/fixtures/terraform-0197c11/
(`--before-dir`).

What is modelled from AWS's documented behaviour (not configurable in Terraform):
- CloudWatch: one data point per minute, visible `--metric-delay` seconds after the minute ends;
  metric math that divides by zero yields no data point. SQS: a queue idle for 6 hours or more
  publishes its first data points up to 15 minutes late (the burst after a quiet night).
- Target tracking: scale out after 3 consecutive data points above the target, scale in after 15
  below 90 % of it; new desired = ceil(desired * metric / target). Scale-out also acts during its
  cooldown (the capacity the last one added counts in the desired count it starts from); one
  scale-in per scale-in cooldown.
- Step scaling alarms invoke their policy every minute while in ALARM, subject to its cooldown;
  step bounds are inclusive below and exclusive above the threshold, the other way round under it.
- Capacity (GPU): a task goes on an idle instance (its image pulled already: model warm-up only)
  or on a new one: instance launch, then the image pull (compressed MB over the network, unpacked
  MB extracted at the gp3-bounded rate), then warm-up. Managed scaling removes an instance idle
  for 15 minutes; cost is instance-hours from launch to removal. Fargate: every task pulls its
  image, cost is task-hours. Scale-in stops starting tasks first. A running task clears
  1/`--seconds-per-image` images a second and holds up to WORKER_CONCURRENCY messages in flight.
- Deploys: deploy.py's selfcheck needs an instance no service task holds; then ECS's rolling
  update, whose new tasks on an instance an old task left pull only the layers that changed.

    .venv/bin/python -m bench.scaling [--compute gpu|cpu] [--metric-delay 120] [--charts DIR]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tools.terraform_hcl import parse_hcl

REPO = Path(__file__).resolve().parents[1]

# The policy before the backlog-per-task fix (visible / RUNNING tasks; +1 from zero; 60-minute
# renewed task protection): terraform/ at commit 0197c11, kept as files (no git history needed).
BEFORE_DIR = REPO / "bench" / "fixtures" / "terraform-0197c11"
STEP = 5.0  # seconds per simulation step
MINUTE = 60


# ---------------------------------------------------------------------------------------------
# Reading Terraform
# ---------------------------------------------------------------------------------------------
def read_file(name: str, source: Path | None) -> str:
    """terraform/<name> of the working tree (source None) or of another folder (the fixture)."""
    return ((source or REPO / "terraform") / name).read_text()


def _one(value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        assert len(value) == 1, value
        value = value[0]
    assert isinstance(value, dict), value
    return value


def _many(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class Expressions:
    """Evaluates the subset of HCL the scaling files use: var./local. references, arithmetic,
    comparisons, `c ? a : b`, min/max/floor/ceil/coalesce/range/tostring."""

    def __init__(self, variables: dict[str, Any], locals_: dict[str, Any], **extra: Any) -> None:
        self.variables = variables
        self.locals = locals_
        self.extra = extra
        self._cache: dict[str, Any] = {}

    def local(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = self.value(self.locals[name])
        return self._cache[name]

    def value(self, expression: Any, **names: Any) -> Any:
        if not isinstance(expression, str):
            return expression
        text = expression.strip()
        if text.startswith("${") and text.endswith("}"):
            text = text[2:-1]
        elif not re.search(r"[a-z_]+\.|[()+*/?]", text):
            return text  # a plain string
        python = _to_python(text)
        namespace: dict[str, Any] = {
            "var": self.variables, "local": _Locals(self), "min": min, "max": max,
            "floor": math.floor, "ceil": math.ceil, "range": range, "tostring": str,
            "coalesce": lambda *a: next(x for x in a if x is not None),
            "None": None, "True": True, "False": False, **self.extra, **names,
        }  # fmt: skip
        return eval(python, {"__builtins__": {}}, namespace)  # noqa: S307 - our own files


class _Locals:
    def __init__(self, owner: Expressions) -> None:
        self.owner = owner

    def __getitem__(self, name: str) -> Any:
        return self.owner.local(name)


def _split_top(text: str, token: str) -> list[str]:
    """`text` split at `token` outside brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and char == token:
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def _to_python(text: str) -> str:
    """HCL expression -> Python expression (inner brackets first, then `c ? a : b`)."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char not in "([":
            out.append(char)
            index += 1
            continue
        depth, end = 0, index
        for end in range(index, len(text)):
            depth += text[end] in "([{"
            depth -= text[end] in ")]}"
            if depth == 0:
                break
        inner = ", ".join(_to_python(part) for part in _split_top(text[index + 1 : end], ","))
        out.append(f"{char}{inner}{text[end]}")
        index = end + 1
    text = "".join(out)
    condition, *rest = _split_top(text, "?")
    if rest:
        branches = _split_top("?".join(rest), ":")
        return (
            f"(({_to_python(branches[0])}) if ({_to_python(condition)}) "
            f"else ({_to_python(':'.join(branches[1:]))}))"
        )
    text = re.sub(r"\bvar\.(\w+)", r'var["\1"]', text)
    text = re.sub(r"\blocal\.(\w+)", r'local["\1"]', text)
    text = text.replace("&&", " and ").replace("||", " or ")
    text = re.sub(r"\bnull\b", "None", text)
    text = re.sub(r"\btrue\b", "True", text)
    return re.sub(r"\bfalse\b", "False", text)


@dataclass
class Alarm:
    expression: str
    metrics: dict[str, str]  # query id -> CloudWatch metric name
    threshold: float
    comparison: str
    periods: int
    missing: str  # treat_missing_data


@dataclass
class StepPolicy:
    adjustment_type: str
    cooldown: float
    steps: list[tuple[float, float | None, int]]  # lower, upper (relative), adjustment


@dataclass
class Policy:
    """One version of the service's scaling, as Terraform configures it."""

    label: str
    max_tasks: int
    target: float
    scale_out_cooldown: float
    scale_in_cooldown: float
    tracking_expression: str
    tracking_metrics: dict[str, str]
    from_zero: Alarm
    from_zero_policy: StepPolicy
    to_zero: Alarm
    to_zero_policy: StepPolicy
    seconds_per_image: float
    concurrency: int
    min_healthy_percent: float
    max_instances: int


def load_policy(
    label: str, source: Path | None, compute: str, seconds_per_image: float | None = None
) -> Policy:
    """The policy of terraform/ (or of the folder `source`) with the variables' defaults,
    `compute` and, if given, `seconds_per_image` set as a caller of the module would."""
    variables: dict[str, Any] = {}
    for block in parse_hcl(read_file("variables.tf", source)).get("variable", []):
        for name, body in block.items():
            variables[name] = body.get("default")
    if "compute" in variables:
        variables["compute"] = compute
    if seconds_per_image is not None:
        variables["seconds_per_image"] = seconds_per_image
    locals_: dict[str, Any] = {}
    for name in ("main.tf", "autoscaling.tf"):
        for block in parse_hcl(read_file(name, source)).get("locals", []):
            locals_.update(block)
    scaling = parse_hcl(read_file("autoscaling.tf", source))
    service = parse_hcl(read_file("service.tf", source))
    resources: dict[str, dict[str, Any]] = {}
    for block in scaling.get("resource", []) + service.get("resource", []):
        for rtype, named in block.items():
            for name, body in named.items():
                resources[f"{rtype}.{name}"] = body
    ev = Expressions(variables, locals_)

    tracking = _one(
        resources["aws_appautoscaling_policy.backlog_per_task"][
            "target_tracking_scaling_policy_configuration"
        ]
    )
    queries = _many(_one(tracking["customized_metric_specification"])["metrics"])
    metrics = {
        q["id"]: _one(_one(q["metric_stat"])["metric"])["metric_name"]
        for q in queries
        if "metric_stat" in q
    }
    (returned,) = [q for q in queries if q.get("return_data") is True]
    spi: Any = variables.get("seconds_per_image")
    seconds_per_image = float(
        ev.local("seconds_per_image") if "seconds_per_image" in locals_ else spi
    )
    service_body = resources["aws_ecs_service.worker"]
    return Policy(
        label=label,
        max_tasks=int(ev.value(resources["aws_appautoscaling_target.service"]["max_capacity"])),
        target=float(ev.value(tracking["target_value"])),
        scale_out_cooldown=float(ev.value(tracking["scale_out_cooldown"])),
        scale_in_cooldown=float(ev.value(tracking["scale_in_cooldown"])),
        tracking_expression=returned["expression"],
        tracking_metrics=metrics,
        from_zero=_alarm(ev, resources["aws_cloudwatch_metric_alarm.messages_while_no_task"]),
        from_zero_policy=_step_policy(ev, resources["aws_appautoscaling_policy.scale_from_zero"]),
        to_zero=_alarm(ev, resources["aws_cloudwatch_metric_alarm.queue_idle"]),
        to_zero_policy=_step_policy(ev, resources["aws_appautoscaling_policy.scale_to_zero"]),
        seconds_per_image=seconds_per_image,
        concurrency=int(variables["worker_concurrency"]),
        min_healthy_percent=float(ev.value(service_body["deployment_minimum_healthy_percent"])),
        max_instances=int(variables["max_instances"]),
    )


def _alarm(ev: Expressions, body: dict[str, Any]) -> Alarm:
    queries = _many(body["metric_query"])
    metrics = {q["id"]: _one(q["metric"])["metric_name"] for q in queries if "metric" in q}
    (returned,) = [q for q in queries if q.get("return_data") is True]
    return Alarm(
        expression=returned["expression"],
        metrics=metrics,
        threshold=float(ev.value(body["threshold"])),
        comparison=body["comparison_operator"],
        periods=int(ev.value(body["evaluation_periods"])),
        missing=body.get("treat_missing_data", "missing"),
    )


def _step_policy(ev: Expressions, body: dict[str, Any]) -> StepPolicy:
    config = _one(body["step_scaling_policy_configuration"])
    steps: list[tuple[float, float | None, int]] = []

    def add(step: dict[str, Any], **names: Any) -> None:
        lower = step.get("metric_interval_lower_bound")
        upper = step.get("metric_interval_upper_bound")
        steps.append(
            (
                float(ev.value(lower, **names)) if lower is not None else -math.inf,
                float(ev.value(upper, **names)) if upper is not None else None,
                int(ev.value(step["scaling_adjustment"], **names)),
            )
        )

    for dynamic in _many(config.get("dynamic")):
        block = _one(dynamic["step_adjustment"])
        for value in ev.value(block["for_each"]):
            add(_one(block["content"]), step_adjustment=_StepValue(value))
    for step in _many(config.get("step_adjustment")):
        add(step)
    return StepPolicy(config["adjustment_type"], float(ev.value(config["cooldown"])), steps)


@dataclass
class _StepValue:
    value: int


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------
CLOUDWATCH_FUNCTIONS = {
    "IF": lambda condition, a, b: a if condition else b,
    "FILL": lambda value, fill: fill if value is None else value,
}


def metric_math(expression: str, values: dict[str, float | None]) -> float | None:
    if any(v is None for v in values.values()) and "FILL" not in expression:
        return None
    try:
        result = eval(expression, {"__builtins__": {}}, {**CLOUDWATCH_FUNCTIONS, **values})  # noqa: S307
    except (ZeroDivisionError, TypeError):
        return None  # CloudWatch drops the data point
    return None if result is None else float(result)


@dataclass(frozen=True)
class Capacity:
    """What a new task waits for, and what capacity costs. Estimates, each a flag; the image sizes
    are measured (docs/deploy.md)."""

    compute: str
    instance_start: float  # GPU: launch, boot, ECS agent registered; Fargate: provisioning
    image_compressed_mb: float  # what a pull downloads
    image_unpacked_mb: float  # what it writes
    network_mb_per_s: float  # ECR -> instance (NAT or VPC endpoint)
    extract_mb_per_s: float  # gunzip + write of the layers, bounded by gp3 throughput
    warmup: float  # model load and warm-up inference
    instance_idle_seconds: float  # managed scaling removes an idle instance after this (GPU)
    price_per_hour: float  # per instance-hour (GPU) or task-hour (Fargate)

    def pull(self, compressed_mb: float | None = None, unpacked_mb: float | None = None) -> float:
        compressed = self.image_compressed_mb if compressed_mb is None else compressed_mb
        unpacked = self.image_unpacked_mb if unpacked_mb is None else unpacked_mb
        return compressed / self.network_mb_per_s + unpacked / self.extract_mb_per_s

    def cold_start(self) -> float:
        return self.instance_start + self.pull() + self.warmup


def default_capacity(compute: str, gp3_mb_per_s: float = 125.0) -> Capacity:
    if compute == "gpu":  # g4dn.xlarge, GPU AMI, the 4.30 GB image (2.49 GB compressed)
        return Capacity("gpu", instance_start=150.0, image_compressed_mb=2490.0,
                        image_unpacked_mb=4300.0, network_mb_per_s=150.0,
                        extract_mb_per_s=min(gp3_mb_per_s, 90.0), warmup=20.0,
                        instance_idle_seconds=900.0, price_per_hour=0.537)  # fmt: skip
    # Fargate 2 vCPU / 4 GB, the 987 MB CPU image (361 MB compressed); billed per task.
    return Capacity("cpu", instance_start=40.0, image_compressed_mb=361.0,
                    image_unpacked_mb=987.0, network_mb_per_s=150.0, extract_mb_per_s=90.0,
                    warmup=10.0, instance_idle_seconds=0.0, price_per_hour=0.0987)  # fmt: skip


# SQS: a queue idle for 6 hours or more may take up to 15 minutes to publish its metrics again.
INACTIVE_AFTER = 6 * 3600
INACTIVE_METRIC_DELAY = 15 * MINUTE


@dataclass
class Instance:
    booted_at: float
    image_at: float | None = None  # when its pull finished
    idle_since: float | None = None  # no task on it since (None: busy)


@dataclass
class Task:
    ready_at: float
    instance: Instance | None = None


@dataclass
class Outcome:
    profile: str
    policy: str
    drain_seconds: float | None
    oldest_age_seconds: float
    peak_desired: int
    peak_running: int
    peak_instances: int
    capacity_hours: float  # instance-hours (GPU) or task-hours (Fargate)
    cost: float
    images: int
    series: list[dict[str, float]]  # one per minute: t, queue, desired, running, instances


@dataclass
class Simulation:
    policy: Policy
    capacity: Capacity
    metric_delay: float
    seconds_per_image: float
    now: float = 0.0
    desired: int = 0
    tasks: list[Task] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    queue: deque[list[float]] = field(default_factory=deque)  # [arrival time, count], FIFO
    visible: float = 0.0
    in_flight: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # one per minute
    last_in: float = -math.inf
    last_from_zero: float = -math.inf
    last_to_zero: float = -math.inf
    last_activity: float = 0.0  # the night before the run counts as idle from t = 0
    woke_at: float = -math.inf  # first message after INACTIVE_AFTER without any
    peak_desired: int = 0
    peak_running: int = 0
    peak_instances: int = 0
    capacity_seconds: float = 0.0
    oldest_age: float = 0.0
    series: list[dict[str, float]] = field(default_factory=list)
    _minute_samples: list[dict[str, float]] = field(default_factory=list)

    def running(self) -> int:
        return sum(1 for t in self.tasks if t.ready_at <= self.now)

    def arrive(self, count: float) -> None:
        if count <= 0:
            return
        if self.visible <= 1e-9 and self.now - self.last_activity >= INACTIVE_AFTER:
            self.woke_at = self.now
        self.queue.append([self.now, count])
        self.visible += count

    def step(self) -> None:
        running = self.running()
        capacity = running * STEP / self.seconds_per_image
        while capacity > 1e-9 and self.queue:
            head = self.queue[0]
            take = min(head[1], capacity)
            head[1] -= take
            capacity -= take
            self.visible -= take
            if head[1] <= 1e-9:
                self.queue.popleft()
        if self.visible < 1e-6:  # float residue of the fractional arrivals: an empty queue
            self.visible = 0.0
            self.queue.clear()
        self.in_flight = min(self.visible, running * self.policy.concurrency)
        if self.visible > 0:
            self.last_activity = self.now
        if self.queue:
            self.oldest_age = max(self.oldest_age, self.now - self.queue[0][0])
        self.retire_idle_instances()
        if self.capacity.compute == "gpu":
            self.capacity_seconds += len(self.instances) * STEP  # billed from launch
        else:
            self.capacity_seconds += len(self.tasks) * STEP  # Fargate bills each task
        self.peak_running = max(self.peak_running, running)
        self.peak_instances = max(self.peak_instances, len(self.instances))
        self._minute_samples.append({
            "visible": self.visible - self.in_flight,  # SQS: visible excludes in flight
            "in_flight": self.in_flight,
            "running": float(running),
            "desired": float(self.desired),
        })  # fmt: skip
        self.now += STEP
        if self.now % MINUTE == 0:
            samples = self._minute_samples
            self.history.append({
                "t": self.now,
                **{k: sum(s[k] for s in samples) / len(samples) for k in samples[0]},
                **{f"max_{k}": max(s[k] for s in samples) for k in samples[0]},
            })  # fmt: skip
            self.series.append({
                "t": self.now, "queue": self.visible, "desired": float(self.desired),
                "running": float(self.running()), "instances": float(len(self.instances)),
            })  # fmt: skip
            self._minute_samples = []
            self.evaluate()

    def retire_idle_instances(self) -> None:
        limit = self.capacity.instance_idle_seconds
        self.instances = [
            i for i in self.instances if i.idle_since is None or self.now - i.idle_since < limit
        ]

    def published_at(self, point: dict[str, float]) -> float:
        """When CloudWatch shows the data point of the minute ending at point["t"]."""
        at = point["t"] + self.metric_delay
        if self.woke_at <= point["t"] - MINUTE < self.woke_at + INACTIVE_METRIC_DELAY:
            at = max(at, self.woke_at + INACTIVE_METRIC_DELAY)
        return at

    def datapoints(self, count: int) -> list[dict[str, float]]:
        """The last `count` minutes CloudWatch has published by now."""
        published = [h for h in self.history if self.published_at(h) <= self.now]
        return published[-count:]

    def start_task(self) -> Task:
        """Placed like ECS with managed scaling: an idle instance (its image pulled already) or a
        new one; on Fargate every task pulls its image."""
        capacity = self.capacity
        if capacity.compute != "gpu":
            return Task(self.now + capacity.cold_start())
        idle = [i for i in self.instances if i.idle_since is not None]
        if idle:
            instance = min(idle, key=lambda i: i.booted_at)
        else:
            instance = Instance(booted_at=self.now + capacity.instance_start)
            self.instances.append(instance)
        instance.idle_since = None
        if instance.image_at is None:
            instance.image_at = max(self.now, instance.booted_at) + capacity.pull()
        return Task(max(self.now, instance.image_at) + capacity.warmup, instance)

    def set_desired(self, value: int) -> None:
        value = max(0, min(self.policy.max_tasks, value))
        if value > len(self.tasks):
            self.tasks += [self.start_task() for _ in range(value - len(self.tasks))]
        elif value < len(self.tasks):
            self.tasks.sort(key=lambda t: -t.ready_at)  # starting tasks go first
            for task in self.tasks[: len(self.tasks) - value]:
                if task.instance is not None:
                    task.instance.idle_since = self.now
            self.tasks = self.tasks[len(self.tasks) - value :]
        self.desired = value
        self.peak_desired = max(self.peak_desired, value)

    def metric_values(
        self, metrics: dict[str, str], point: dict[str, float], stat: str
    ) -> dict[str, float | None]:
        by_name = {
            "ApproximateNumberOfMessagesVisible": "visible",
            "ApproximateNumberOfMessagesNotVisible": "in_flight",
            "RunningTaskCount": "running",
            "DesiredTaskCount": "desired",
        }
        prefix = "max_" if stat == "Maximum" else ""
        values: dict[str, float | None] = {}
        for query_id, name in metrics.items():
            value = point[prefix + by_name[name]]
            # Container Insights publishes no task counts for a service with no task.
            values[query_id] = (
                None if by_name[name] in ("running", "desired") and value == 0 else value
            )
        return values

    def evaluate(self) -> None:
        policy = self.policy
        # Target tracking. Scale-out is not blocked by its cooldown: during it, the capacity the
        # last scale-out added counts in the desired count the next one starts from (AWS's
        # documented behaviour); the formula below starts from the desired count already.
        points = self.datapoints(15)
        values = [
            metric_math(
                policy.tracking_expression,
                self.metric_values(policy.tracking_metrics, p, "Average"),
            )
            for p in points
        ]
        last3 = values[-3:]
        if (
            len(last3) == 3
            and all(v is not None and v > policy.target for v in last3)
            and self.desired > 0
        ):
            latest = last3[-1]
            assert latest is not None
            wanted = math.ceil(self.desired * latest / policy.target)
            if wanted > self.desired:
                self.set_desired(wanted)
        if (
            len(values) == 15
            and all(v is not None and v < 0.9 * policy.target for v in values)
            and self.now - self.last_in >= policy.scale_in_cooldown
            and self.desired > 1
        ):
            latest = values[-1]
            assert latest is not None
            wanted = max(1, math.ceil(self.desired * latest / policy.target))
            if wanted < self.desired:
                self.set_desired(wanted)
                self.last_in = self.now
        # Step policies.
        for alarm, step_policy, last in (
            (policy.from_zero, policy.from_zero_policy, "last_from_zero"),
            (policy.to_zero, policy.to_zero_policy, "last_to_zero"),
        ):
            value = self.alarm_value(alarm)
            if value is None or self.now - getattr(self, last) < step_policy.cooldown:
                continue
            below = alarm.comparison.startswith("Less")
            self.apply_steps(step_policy, value - alarm.threshold, below)
            setattr(self, last, self.now)

    def alarm_value(self, alarm: Alarm) -> float | None:
        """The breaching value when the alarm is in ALARM, else None."""
        points = self.datapoints(alarm.periods)
        if len(points) < alarm.periods and alarm.missing != "breaching":
            return None
        missing: list[float | None] = [None] * (alarm.periods - len(points))
        values = missing + [
            metric_math(alarm.expression, self.metric_values(alarm.metrics, p, "Maximum"))
            for p in points
        ]
        compare: Callable[[float], bool] = {
            "GreaterThanThreshold": lambda v: v > alarm.threshold,
            "LessThanOrEqualToThreshold": lambda v: v <= alarm.threshold,
        }[alarm.comparison]
        breaching = [
            (v is None and alarm.missing == "breaching") or (v is not None and compare(v))
            for v in values
        ]
        if not all(breaching):
            return None
        latest = values[-1]
        return alarm.threshold if latest is None else latest

    def apply_steps(self, policy: StepPolicy, delta: float, below: bool = False) -> None:
        """AWS's step bounds: above the alarm threshold the lower bound is inclusive and the
        upper exclusive; at or below it (a LessThan alarm) the other way round."""
        for lower, upper, adjustment in policy.steps:
            if below:
                inside = delta > lower and (upper is None or delta <= upper)
            else:
                inside = delta >= lower and (upper is None or delta < upper)
            if inside:
                if policy.adjustment_type == "ExactCapacity":
                    if adjustment != self.desired:
                        self.set_desired(adjustment)
                else:
                    self.set_desired(self.desired + adjustment)
                return


Profile = Callable[[float], float]  # arrivals in the STEP starting at t
MORNING = 7 * 3600  # the queue has been idle since midnight (t = 0): > 6 h, so SQS wakes late


def burst_after_quiet_night(t: float) -> float:
    """10,000 images in the first minute after 07:00, after a quiet night (service at 0)."""
    return 10_000 * STEP / MINUTE if MORNING <= t < MORNING + MINUTE else 0.0


def import_after_quiet_night(t: float) -> float:
    """2,000 images in one minute at 07:00 after a quiet night: fewer than max_tasks can clear at
    the target, so any task beyond ceil(2000 / target) is overshoot."""
    return 2_000 * STEP / MINUTE if MORNING <= t < MORNING + MINUTE else 0.0


def steady_trickle(t: float) -> float:
    """300 images an hour, evenly, all day (a few hundred books a day)."""
    return 300 / 3600 * STEP


def day_of_imports(t: float) -> float:
    """A working day: 2 images a minute 07:00-20:00, and an import of 1,500 images at the top of
    every hour 08:00-17:00."""
    hour = t / 3600
    arrivals = 2 * STEP / MINUTE if 7 <= hour < 20 else 0.0
    if 8 <= hour < 18 and t % 3600 < MINUTE:
        arrivals += 1_500 * STEP / MINUTE
    return arrivals


PROFILES: dict[str, tuple[Profile, float]] = {
    "burst 10k after quiet night": (burst_after_quiet_night, 12 * 3600),
    "import 2k after quiet night": (import_after_quiet_night, 12 * 3600),
    "steady trickle 300/h": (steady_trickle, 24 * 3600),
    "day of imports (15k)": (day_of_imports, 24 * 3600),
}


def simulate(
    policy: Policy,
    profile: str,
    *,
    capacity: Capacity,
    metric_delay: float,
    seconds_per_image: float,
) -> Outcome:
    arrivals, duration = PROFILES[profile]
    sim = Simulation(policy, capacity, metric_delay, seconds_per_image)
    total = 0.0
    last_arrival = 0.0
    drained_at: float | None = None
    while sim.now < duration:
        count = arrivals(sim.now)
        if count > 0:
            total += count
            last_arrival = sim.now
            drained_at = None
        sim.arrive(count)
        sim.step()
        if drained_at is None and total > 0 and sim.visible <= 1e-6:
            drained_at = sim.now
    hours = sim.capacity_seconds / 3600
    return Outcome(
        profile=profile,
        policy=policy.label,
        drain_seconds=None if drained_at is None else drained_at - last_arrival,
        oldest_age_seconds=sim.oldest_age,
        peak_desired=sim.peak_desired,
        peak_running=sim.peak_running,
        peak_instances=sim.peak_instances,
        capacity_hours=hours,
        cost=hours * capacity.price_per_hour,
        images=round(total),
        series=sim.series,
    )


# ---------------------------------------------------------------------------------------------
# A deploy at max_tasks under a sustained backlog: the selfcheck, then ECS's rolling update
# ---------------------------------------------------------------------------------------------
SELFCHECK_SECONDS = 30.0  # the selfcheck's own checks, once its model is warm
# Layers a rollout pulls onto an instance that holds the previous image (compressed, unpacked MB;
# docs/deploy.md): a code change is the code layer; a dependency change re-pulls the dependency
# layer, which no longer carries the CUDA/cuDNN wheels (their own layer since the lock split).
CODE_CHANGE = (2.0, 6.0)
DEPENDENCY_CHANGE = (480.0, 1180.0)
DEPENDENCY_CHANGE_ONE_LAYER = (2180.0, 4020.0)  # before the split: CUDA wheels in that layer


@dataclass
class Rollout:
    case: str
    completed_seconds: float | None  # from the deploy's start (selfcheck included)
    lowest_running: int
    rollout_seconds: float | None = None  # from the service update
    note: str = ""


def simulate_rollout(
    *,
    tasks: int,
    instances: int,
    min_healthy_percent: float,
    capacity: Capacity,
    max_percent: float = 200,
    protection_renewed: bool = False,
    gate: bool = False,
    changed_mb: tuple[float, float] = CODE_CHANGE,
    reuse_instances: bool = True,
    drain: float = 5.0,
    timeout: float = 3600.0,
    case: str = "",
) -> Rollout:
    """deploy.py then ECS, one scheduler pass per STEP. The selfcheck (`gate`) is one more task:
    it needs an instance no service task holds (a new one: full cold start), and afterwards that
    instance stays, idle, with the new image. ECS then starts new tasks while the total stays
    under max_percent, on an idle instance with the new image (warm-up only), an instance an old
    task left (pulls the changed layers), or a new instance up to `instances` (cold start), and
    stops old tasks while the healthy count stays at or above min_healthy_percent. A busy worker
    that renews scale-in protection cannot be stopped by a deployment. Fargate has no instances:
    every new task is a cold start. `reuse_instances=False`: every new task gets a new instance
    (two cold waves at 50 %)."""
    fargate = capacity.compute != "gpu"
    now = 0.0
    launched = tasks  # instances up (one per old task)
    idle_new = 0
    idle_old = 0
    if gate:
        if not fargate and instances - launched < 1:
            return Rollout(case, None, tasks, None, "selfcheck never placed")
        now = capacity.cold_start() + SELFCHECK_SECONDS
        if not fargate:
            launched += 1
            idle_new = 1
    started = now
    update = capacity.pull(*changed_mb) + capacity.warmup
    old_running = tasks
    new: list[float] = []  # ready times
    stopping: list[float] = []  # old tasks draining; their instance frees at that time
    minimum = math.ceil(tasks * min_healthy_percent / 100)
    maximum = math.floor(tasks * max_percent / 100)
    lowest = tasks
    while now <= started + timeout:
        idle_old += sum(1 for t in stopping if t <= now)
        stopping = [t for t in stopping if t > now]
        new_ready = sum(1 for t in new if t <= now)
        if new_ready == tasks and old_running == 0:
            return Rollout(case, now, lowest, now - started)
        placed = old_running + len(stopping) + len(new)
        while len(new) < tasks and placed < maximum:
            if fargate:
                new.append(now + capacity.cold_start())
            elif idle_new:
                idle_new -= 1
                new.append(now + capacity.warmup)
            elif idle_old and reuse_instances:
                idle_old -= 1
                new.append(now + update)
            elif idle_old:  # the instance goes (refresh, scale-in); a new one replaces it
                idle_old -= 1
                new.append(now + capacity.cold_start())
            elif launched < instances:
                launched += 1
                new.append(now + capacity.cold_start())
            else:
                break
            placed += 1
        healthy = old_running + new_ready
        while old_running > 0 and not protection_renewed and healthy - 1 >= minimum:
            old_running -= 1
            healthy -= 1
            stopping.append(now + drain)
        # New tasks beyond `tasks` replace old ones 1:1 once healthy (ECS keeps desired count).
        excess = old_running + new_ready - tasks
        if excess > 0 and not protection_renewed:
            old_running -= excess
            stopping += [now + drain] * excess
        lowest = min(lowest, old_running + new_ready)
        now += STEP
    return Rollout(case, None, lowest, None, "still in progress")


def rollout_cases(before: Policy, after: Policy, capacity: Capacity) -> list[Rollout]:
    """The deadlocks the deployment bounds fixed, then deploys through the selfcheck."""
    tasks = after.max_tasks
    b, a = before.min_healthy_percent, after.min_healthy_percent
    gpu = capacity.compute == "gpu"
    room = "max_instances = max_tasks" if gpu else "Fargate"
    cases: list[tuple[str, dict[str, Any]]] = [
        (f"before: min healthy {b:g} %, {room}, 60-min protection renewed",
         {"min_healthy_percent": b, "instances": tasks, "protection_renewed": True}),
        (f"min healthy {a:g} %, protection renewed",
         {"min_healthy_percent": a, "instances": tasks, "protection_renewed": True}),
        (f"min healthy {b:g} %, no protection, {room}",
         {"min_healthy_percent": b, "instances": tasks}),
        (f"min healthy {a:g} %, no protection, {room} (rollout alone)",
         {"min_healthy_percent": a, "instances": tasks}),
        (f"deploy with selfcheck, {room}",
         {"min_healthy_percent": a, "instances": tasks, "gate": True}),
    ]  # fmt: skip
    if gpu:
        spare = "max_instances = max_tasks + 1"
        cases += [
            (f"min healthy {b:g} %, no protection, max_instances = 2 x max_tasks",
             {"min_healthy_percent": b, "instances": 2 * tasks}),
            (f"min healthy {a:g} %, every new task on a new instance (two cold waves)",
             {"min_healthy_percent": a, "instances": tasks, "reuse_instances": False}),
            (f"deploy with selfcheck, {spare}: code change",
             {"min_healthy_percent": a, "instances": tasks + 1, "gate": True}),
            (f"deploy with selfcheck, {spare}: dependency change, CUDA in the dependency layer",
             {"min_healthy_percent": a, "instances": tasks + 1, "gate": True,
              "changed_mb": DEPENDENCY_CHANGE_ONE_LAYER}),
            (f"deploy with selfcheck, {spare}: dependency change, CUDA layer kept",
             {"min_healthy_percent": a, "instances": tasks + 1, "gate": True,
              "changed_mb": DEPENDENCY_CHANGE}),
            ("rollback to a revision that ran (no selfcheck), max_instances = max_tasks",
             {"min_healthy_percent": a, "instances": tasks, "changed_mb": DEPENDENCY_CHANGE}),
        ]  # fmt: skip
    return [
        simulate_rollout(tasks=tasks, capacity=capacity, case=label, **kwargs)
        for label, kwargs in cases
    ]


def rollout_wait_seconds(rollouts: list[Rollout], margin: float = 1.5) -> float:
    """deploy.py's rollout wait: the slowest rollout that completes (from the service update:
    the selfcheck has its own timeout), with a margin, in whole minutes."""
    slowest = max(r.rollout_seconds for r in rollouts if r.rollout_seconds is not None)
    return math.ceil(slowest * margin / MINUTE) * MINUTE


# ---------------------------------------------------------------------------------------------
# Report and charts
# ---------------------------------------------------------------------------------------------
def _minutes(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.1f} min"


def chart(profile: str, outcomes: list[Outcome], path: Path) -> None:
    """Queue depth, desired and running tasks and instances over time, one panel per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(len(outcomes), 1, figsize=(10, 3.2 * len(outcomes)),
                                  sharex=True, squeeze=False)  # fmt: skip
    for panel, outcome in zip(panels[:, 0], outcomes, strict=True):
        hours = [s["t"] / 3600 for s in outcome.series]
        queue = panel.twinx()
        queue.fill_between(hours, [s["queue"] for s in outcome.series], color="#c6dbef",
                           step="post", label="queue depth (messages)")  # fmt: skip
        queue.set_ylabel("messages")
        panel.set_zorder(queue.get_zorder() + 1)
        panel.patch.set_visible(False)
        for key, style in (("desired", "-"), ("running", "--"), ("instances", ":")):
            panel.step(hours, [s[key] for s in outcome.series], style, where="post",
                       label=f"{key} {'tasks' if key != 'instances' else ''}".strip())  # fmt: skip
        panel.set_ylabel("tasks / instances")
        panel.set_title(f"{profile}: {outcome.policy} (drain {_minutes(outcome.drain_seconds)}, "
                        f"{outcome.capacity_hours:.1f} capacity-hours, ${outcome.cost:.2f})",
                        fontsize=10)  # fmt: skip
        lines, labels = panel.get_legend_handles_labels()
        more, more_labels = queue.get_legend_handles_labels()
        panel.legend(lines + more, labels + more_labels, loc="upper right", fontsize=8)
    # The active part of the day: first message to the last instance, a quarter hour around it.
    active = [s["t"] / 3600 for o in outcomes for s in o.series if s["queue"] or s["instances"]]
    if active:
        panels[-1, 0].set_xlim(max(0.0, min(active) - 0.25), max(active) + 0.25)
    panels[-1, 0].set_xlabel("hour of the day")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def slug(profile: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", profile.lower()).strip("-")


def run(args: argparse.Namespace) -> Iterator[str]:
    after = load_policy("after", None, args.compute, args.seconds_per_image)
    spi = after.seconds_per_image
    # The old module had no compute option: give it the same per-image time (its target follows).
    before = load_policy("before", args.before_dir, args.compute, spi)
    capacity = default_capacity(args.compute, args.gp3_throughput)
    if args.instance_start is not None:
        capacity = replace(capacity, instance_start=args.instance_start)
    gpu = args.compute == "gpu"
    yield (
        f"compute {args.compute}: {spi:g} s/image per task, target {after.target:g} messages/task, "
        f"max {after.max_tasks} tasks, cooldowns out/in "
        f"{after.scale_out_cooldown:g}/{after.scale_in_cooldown:g} s"
    )
    yield (
        f"cold start {capacity.cold_start():.0f} s = "
        f"{'instance launch' if gpu else 'Fargate provisioning'} {capacity.instance_start:g} s + "
        f"image pull {capacity.pull():.0f} s ({capacity.image_compressed_mb:g} MB at "
        f"{capacity.network_mb_per_s:g} MB/s, {capacity.image_unpacked_mb:g} MB extracted at "
        f"{capacity.extract_mb_per_s:g} MB/s) + warm-up {capacity.warmup:g} s; metric delay "
        f"{args.metric_delay:g} s (up to {INACTIVE_METRIC_DELAY:g} s after "
        f"{INACTIVE_AFTER // 3600} h idle); ${capacity.price_per_hour:g} per "
        f"{'instance' if gpu else 'task'}-hour"
    )
    where = args.before_dir.resolve()
    shown = where.relative_to(REPO) if where.is_relative_to(REPO) else where
    yield (
        f"before = {shown} ({before.tracking_expression}); "
        f"after = terraform/ ({after.tracking_expression})"
    )
    yield ""
    unit = "instance-hours" if gpu else "task-hours"
    yield (
        "| load | policy | time to drain | oldest message | peak tasks (desired/running) "
        f"| peak instances | {unit} | cost |"
    )
    yield "|---|---|---|---|---|---|---|---|"
    for profile in PROFILES:
        outcomes = [
            simulate(
                policy,
                profile,
                capacity=capacity,
                metric_delay=args.metric_delay,
                seconds_per_image=spi,
            )
            for policy in (before, after)
        ]
        for o in outcomes:
            yield (
                f"| {profile} | {o.policy} | {_minutes(o.drain_seconds)} | "
                f"{_minutes(o.oldest_age_seconds)} | {o.peak_desired}/{o.peak_running} | "
                f"{o.peak_instances if gpu else '-'} | {o.capacity_hours:.1f} | ${o.cost:.2f} |"
            )
        if args.charts is not None:
            chart(profile, outcomes, args.charts / f"scaling-{args.compute}-{slug(profile)}.png")
    yield ""
    yield f"A deploy at {after.max_tasks} tasks under a sustained backlog:"
    yield ""
    yield "| case | deploy completes after | of which the rollout | fewest running tasks |"
    yield "|---|---|---|---|"
    rollouts = rollout_cases(before, after, capacity)
    for r in rollouts:
        done = f"never ({r.note})" if r.completed_seconds is None else _minutes(r.completed_seconds)
        yield f"| {r.case} | {done} | {_minutes(r.rollout_seconds)} | {r.lowest_running} |"
    yield ""
    yield (
        f"Rollout wait derived from the slowest completing rollout x 1.5: "
        f"{rollout_wait_seconds(rollouts) / 60:.0f} min"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compute", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument(
        "--metric-delay",
        type=float,
        default=120.0,
        help="seconds before a CloudWatch data point is visible to alarms",
    )
    parser.add_argument(
        "--seconds-per-image",
        type=float,
        default=None,
        help="real per-task time per image (default: Terraform's value)",
    )
    parser.add_argument(
        "--gp3-throughput", type=float, default=125.0, help="MB/s of the instances' root volume"
    )
    parser.add_argument(
        "--instance-start", type=float, default=None,
        help="seconds from launch to an instance ECS can place on (gpu 150) or Fargate's "
        "provisioning (cpu 40)",
    )  # fmt: skip
    parser.add_argument(
        "--before-dir", type=Path, default=BEFORE_DIR, help="Terraform files of the old policy"
    )
    parser.add_argument("--charts", type=Path, default=None, help="write one PNG per load here")
    args = parser.parse_args(argv)
    for line in run(args):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
