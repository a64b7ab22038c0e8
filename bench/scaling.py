"""Autoscaling simulator: replays the service's scaling policies exactly as Terraform configures
them against load profiles, and a rollout at full scale under a sustained backlog.

The policy is READ, not copied: python-hcl2 parses terraform/variables.tf (defaults),
terraform/main.tf (locals such as the backlog-per-task target) and terraform/autoscaling.tf (the
target-tracking metric math, the scale-from-zero and scale-to-zero alarms, their step
adjustments and cooldowns), and a small evaluator computes the HCL expressions. "before" is the
same files at the commit before the item-3 fix (`--before-ref`, read with `git show`).

What is modelled from AWS's documented behaviour (not configurable in Terraform):
- CloudWatch: one data point per minute, visible `--metric-delay` seconds after the minute ends;
  metric math that divides by zero yields no data point.
- Target tracking: scale out after 3 consecutive data points above the target, scale in after 15
  below 90 % of it; new desired = ceil(desired * metric / target); one scale-out per scale-out
  cooldown, one scale-in per scale-in cooldown.
- Step scaling alarms invoke their policy every minute while in ALARM, subject to its cooldown.
- ECS: a new task runs `--cold-start` seconds after it is asked for (instance launch, image pull,
  model warm-up); scale-in stops starting tasks first. A running task clears 1/`--seconds-per-image`
  images a second and holds up to WORKER_CONCURRENCY messages in flight.

    .venv/bin/python bench/scaling.py [--compute gpu|cpu] [--cold-start 300] [--metric-delay 120]
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repo's deploy package

from deploy.terraform_hcl import parse_hcl  # noqa: E402

# The last commit with the policy before the item-3 fix (visible / RUNNING tasks; +1 from zero)
# and 60-minute renewed task protection (item 2).
BEFORE_REF = "0197c11"
STEP = 5.0  # seconds per simulation step
MINUTE = 60


# ---------------------------------------------------------------------------------------------
# Reading Terraform
# ---------------------------------------------------------------------------------------------
def read_file(name: str, ref: str | None) -> str:
    """terraform/<name> in the working tree (ref None) or at a git commit."""
    if ref is None:
        return (REPO / "terraform" / name).read_text()
    completed = subprocess.run(
        ["git", "show", f"{ref}:terraform/{name}"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise SystemExit(f"cannot read terraform/{name} at {ref}: {completed.stderr.strip()}")
    return completed.stdout


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
    label: str, ref: str | None, compute: str, seconds_per_image: float | None = None
) -> Policy:
    """The policy of terraform/ (at git `ref`, or the working tree) with the variables' defaults,
    `compute` and, if given, `seconds_per_image` set as a caller of the module would."""
    variables: dict[str, Any] = {}
    for block in parse_hcl(read_file("variables.tf", ref)).get("variable", []):
        for name, body in block.items():
            variables[name] = body.get("default")
    if "compute" in variables:
        variables["compute"] = compute
    if seconds_per_image is not None:
        variables["seconds_per_image"] = seconds_per_image
    locals_: dict[str, Any] = {}
    for name in ("main.tf", "autoscaling.tf"):
        for block in parse_hcl(read_file(name, ref)).get("locals", []):
            locals_.update(block)
    scaling = parse_hcl(read_file("autoscaling.tf", ref))
    service = parse_hcl(read_file("service.tf", ref))
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
    spi = variables.get("seconds_per_image")
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


@dataclass
class Task:
    ready_at: float


@dataclass
class Outcome:
    profile: str
    policy: str
    drain_seconds: float | None
    oldest_age_seconds: float
    peak_desired: int
    peak_running: int
    task_hours: float
    images: int


@dataclass
class Simulation:
    policy: Policy
    cold_start: float
    metric_delay: float
    seconds_per_image: float
    now: float = 0.0
    desired: int = 0
    tasks: list[Task] = field(default_factory=list)
    queue: deque[list[float]] = field(default_factory=deque)  # [arrival time, count], FIFO
    visible: float = 0.0
    in_flight: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # one per minute
    last_out: float = -math.inf
    last_in: float = -math.inf
    last_from_zero: float = -math.inf
    last_to_zero: float = -math.inf
    peak_desired: int = 0
    peak_running: int = 0
    task_seconds: float = 0.0
    oldest_age: float = 0.0
    _minute_samples: list[dict[str, float]] = field(default_factory=list)

    def running(self) -> int:
        return sum(1 for t in self.tasks if t.ready_at <= self.now)

    def arrive(self, count: float) -> None:
        if count > 0:
            self.queue.append([self.now, count])
            self.visible += count

    def step(self) -> None:
        running = self.running()
        # Work: each running task clears STEP / seconds_per_image images.
        capacity = running * STEP / self.seconds_per_image
        self.in_flight = min(self.visible, running * self.policy.concurrency)
        while capacity > 1e-9 and self.queue:
            head = self.queue[0]
            take = min(head[1], capacity)
            head[1] -= take
            capacity -= take
            self.visible -= take
            if head[1] <= 1e-9:
                self.queue.popleft()
        self.visible = max(self.visible, 0.0)
        self.in_flight = min(self.visible, running * self.policy.concurrency)
        if self.queue:
            self.oldest_age = max(self.oldest_age, self.now - self.queue[0][0])
        self.task_seconds += len(self.tasks) * STEP  # a starting task is billed too
        self.peak_running = max(self.peak_running, running)
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
            self._minute_samples = []
            self.evaluate()

    def datapoints(self, count: int) -> list[dict[str, float]]:
        """The last `count` minutes CloudWatch has published by now."""
        published = [h for h in self.history if h["t"] + self.metric_delay <= self.now]
        return published[-count:]

    def set_desired(self, value: int) -> None:
        value = max(0, min(self.policy.max_tasks, value))
        if value > len(self.tasks):
            self.tasks += [Task(self.now + self.cold_start) for _ in range(value - len(self.tasks))]
        elif value < len(self.tasks):
            self.tasks.sort(key=lambda t: -t.ready_at)  # starting tasks go first
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
        # Target tracking.
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
            and self.now - self.last_out >= policy.scale_out_cooldown
            and self.desired > 0
        ):
            latest = last3[-1]
            assert latest is not None
            wanted = math.ceil(self.desired * latest / policy.target)
            if wanted > self.desired:
                self.set_desired(wanted)
                self.last_out = self.now
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
            self.apply_steps(step_policy, value - alarm.threshold)
            setattr(self, last, self.now)

    def alarm_value(self, alarm: Alarm) -> float | None:
        """The breaching value when the alarm is in ALARM, else None."""
        points = self.datapoints(alarm.periods)
        if len(points) < alarm.periods and alarm.missing != "breaching":
            return None
        values = [
            metric_math(alarm.expression, self.metric_values(alarm.metrics, p, "Maximum"))
            for p in points
        ]
        values = [None] * (alarm.periods - len(values)) + values
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

    def apply_steps(self, policy: StepPolicy, delta: float) -> None:
        for lower, upper, adjustment in policy.steps:
            if delta >= lower and (upper is None or delta < upper):
                if policy.adjustment_type == "ExactCapacity":
                    if adjustment != self.desired:
                        self.set_desired(adjustment)
                else:
                    self.set_desired(self.desired + adjustment)
                return


Profile = Callable[[float], float]  # arrivals in the STEP starting at t


def burst_after_quiet_night(t: float) -> float:
    """10,000 images in the first minute after 01:00, after a quiet night (service at 0)."""
    return 10_000 * STEP / MINUTE if 3600 <= t < 3600 + MINUTE else 0.0


def import_after_quiet_night(t: float) -> float:
    """2,000 images in one minute after a quiet night: fewer than max_tasks can clear at the
    target, so any task beyond ceil(2000 / target) is overshoot."""
    return 2_000 * STEP / MINUTE if 3600 <= t < 3600 + MINUTE else 0.0


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
    "burst 10k after quiet night": (burst_after_quiet_night, 6 * 3600),
    "import 2k after quiet night": (import_after_quiet_night, 6 * 3600),
    "steady trickle 300/h": (steady_trickle, 24 * 3600),
    "day of imports (15k)": (day_of_imports, 24 * 3600),
}


def simulate(
    policy: Policy,
    profile: str,
    *,
    cold_start: float,
    metric_delay: float,
    seconds_per_image: float,
) -> Outcome:
    arrivals, duration = PROFILES[profile]
    sim = Simulation(policy, cold_start, metric_delay, seconds_per_image)
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
    return Outcome(
        profile=profile,
        policy=policy.label,
        drain_seconds=None if drained_at is None else drained_at - last_arrival,
        oldest_age_seconds=sim.oldest_age,
        peak_desired=sim.peak_desired,
        peak_running=sim.peak_running,
        task_hours=sim.task_seconds / 3600,
        images=round(total),
    )


# ---------------------------------------------------------------------------------------------
# A rollout at max_tasks under a sustained backlog (item 2)
# ---------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    case: str
    completed_seconds: float | None
    lowest_running: int


def simulate_rollout(
    *,
    tasks: int,
    instances: int,
    min_healthy_percent: float,
    max_percent: float = 200,
    protection_renewed: bool,
    cold_start: float,
    drain: float = 5.0,
    timeout: float = 1200.0,
    case: str = "",
) -> Rollout:
    """ECS's rolling update, one scheduler pass per STEP: start new tasks while the total stays
    under max_percent and an instance is free, stop old tasks while the healthy count stays at or
    above min_healthy_percent. A busy worker that renews scale-in protection (the old 60-minute
    protection, renewed while it holds messages, as it always does under a backlog) cannot be
    stopped by a deployment."""
    old_running = tasks
    new: list[float] = []  # ready times
    stopping: list[float] = []  # old tasks draining; their instance frees at that time
    minimum = math.ceil(tasks * min_healthy_percent / 100)
    maximum = math.floor(tasks * max_percent / 100)
    now = 0.0
    lowest = tasks
    while now <= timeout:
        stopping = [t for t in stopping if t > now]
        new_ready = sum(1 for t in new if t <= now)
        if new_ready == tasks and old_running == 0:
            return Rollout(case, now, lowest)
        placed = old_running + len(stopping) + len(new)
        while len(new) < tasks and placed < min(maximum, instances):
            new.append(now + cold_start)
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
    return Rollout(case, None, lowest)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _minutes(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.1f} min"


def run(args: argparse.Namespace) -> Iterator[str]:
    after = load_policy("after", None, args.compute, args.seconds_per_image)
    spi = after.seconds_per_image
    # The old module had no compute option: give it the same per-image time (its target follows).
    before = load_policy("before", args.before_ref, args.compute, spi)
    yield (
        f"compute {args.compute}: {spi:g} s/image per task, cold start {args.cold_start:g} s, "
        f"metric delay {args.metric_delay:g} s; target {after.target:g} messages/task, "
        f"max {after.max_tasks} tasks, cooldowns out/in "
        f"{after.scale_out_cooldown:g}/{after.scale_in_cooldown:g} s"
    )
    yield (
        f"before = terraform/ at {args.before_ref} ({before.tracking_expression}); "
        f"after = working tree ({after.tracking_expression})"
    )
    yield ""
    yield (
        "| load | policy | time to drain | oldest message | peak tasks (desired/running) "
        "| task-hours |"
    )
    yield "|---|---|---|---|---|---|"
    for profile in PROFILES:
        for policy in (before, after):
            o = simulate(policy, profile, cold_start=args.cold_start,
                         metric_delay=args.metric_delay, seconds_per_image=spi)  # fmt: skip
            yield (
                f"| {profile} | {o.policy} | {_minutes(o.drain_seconds)} | "
                f"{_minutes(o.oldest_age_seconds)} | {o.peak_desired}/{o.peak_running} | "
                f"{o.task_hours:.1f} |"
            )
    yield ""
    yield (
        f"Rollout at {after.max_tasks} tasks under a sustained backlog "
        "(deploy.py rolls back after 20 min):"
    )
    yield ""
    yield "| case | rollout completes after | fewest running tasks |"
    yield "|---|---|---|"
    cases = [
        ("before: min healthy {b:g} %, max_instances = max_tasks, 60-min protection renewed",
         before.min_healthy_percent, after.max_tasks, True),
        ("min healthy {a:g} %, protection renewed",
         after.min_healthy_percent, after.max_tasks, True),
        ("min healthy {b:g} %, no protection, max_instances = max_tasks",
         before.min_healthy_percent, after.max_tasks, False),
        ("min healthy {b:g} %, no protection, max_instances = 2 x max_tasks",
         before.min_healthy_percent, 2 * after.max_tasks, False),
        ("after: min healthy {a:g} %, no protection, max_instances = max_tasks",
         after.min_healthy_percent, after.max_tasks, False),
    ]  # fmt: skip
    if args.compute == "cpu":
        # Fargate has no instance group: nothing caps how many tasks a rollout may place.
        cases = [(label.replace("max_instances = max_tasks", "Fargate"), minimum, 10**6, renewed)
                 for label, minimum, _, renewed in cases if "2 x" not in label]  # fmt: skip
    for label, minimum, instances, renewed in cases:
        r = simulate_rollout(
            tasks=after.max_tasks, instances=instances, min_healthy_percent=minimum,
            protection_renewed=renewed, cold_start=args.cold_start,
            case=label.format(a=after.min_healthy_percent, b=before.min_healthy_percent),
        )  # fmt: skip
        yield f"| {r.case} | {_minutes(r.completed_seconds)} | {r.lowest_running} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compute", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument(
        "--cold-start",
        type=float,
        default=None,
        help="seconds from 'task asked for' to 'receiving' (gpu 300, cpu 90)",
    )
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
    parser.add_argument("--before-ref", default=BEFORE_REF, help="git commit of the old policy")
    args = parser.parse_args(argv)  # fmt: skip
    if args.cold_start is None:
        args.cold_start = 300.0 if args.compute == "gpu" else 90.0
    for line in run(args):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
