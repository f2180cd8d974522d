"""Prometheus text exposition of what the service counts (no client library needed for this)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledger.kafka.intake import IntakeStats

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        # route -> requests per bucket: the first whose bound the latency does not exceed,
        # or the last (above every bound). Cumulated only when rendered: observing a request
        # is one increment instead of one per bucket, on every request.
        self.latency_buckets: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            self.latency_sum[route] = self.latency_sum.get(route, 0.0) + seconds
            self.latency_count[route] += 1
            counts = self.latency_buckets.get(route)
            if counts is None:
                counts = self.latency_buckets[route] = [0] * (len(BUCKETS) + 1)
            counts[bisect_left(BUCKETS, seconds)] += 1

    def facts(self, accepted: int, refused_codes: list[str]) -> None:
        with self._lock:
            self.accepted["fact"] += accepted
            for code in refused_codes:
                self.refused[code] += 1

    def render(
        self,
        projection_lag: int,
        writer_restarts: int | None = None,
        open_requests: dict[str, int] | None = None,
        intake: IntakeStats | None = None,
    ) -> str:
        lines = [
            "# HELP ledger_http_requests_total HTTP requests by route, method and status.",
            "# TYPE ledger_http_requests_total counter",
        ]
        with self._lock:
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(
                    f'ledger_http_requests_total{{route="{route}",method="{method}",'
                    f'status="{status}"}} {n}'
                )
            lines += [
                "# HELP ledger_http_request_seconds Request latency by route.",
                "# TYPE ledger_http_request_seconds histogram",
            ]
            for route in sorted(self.latency_count):
                below = 0
                for bound, count in zip(BUCKETS, self.latency_buckets[route], strict=False):
                    below += count
                    lines.append(
                        f'ledger_http_request_seconds_bucket{{route="{route}",le="{bound}"}} '
                        f"{below}"
                    )
                lines.append(
                    f'ledger_http_request_seconds_bucket{{route="{route}",le="+Inf"}} '
                    f"{self.latency_count[route]}"
                )
                lines.append(
                    f'ledger_http_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]}'
                )
                lines.append(
                    f'ledger_http_request_seconds_count{{route="{route}"}} '
                    f"{self.latency_count[route]}"
                )
            lines += [
                "# HELP ledger_facts_accepted_total Facts published over HTTP and recorded "
                "(retries answered with their first receipt not counted).",
                "# TYPE ledger_facts_accepted_total counter",
                f"ledger_facts_accepted_total {self.accepted['fact']}",
                "# HELP ledger_facts_refused_total Facts published over HTTP and refused, by code.",
                "# TYPE ledger_facts_refused_total counter",
            ]
            for code, n in sorted(self.refused.items()):
                lines.append(f'ledger_facts_refused_total{{code="{code}"}} {n}')
        lines += projection_lag_lines(projection_lag)
        if open_requests is not None:
            lines += [
                "# HELP ledger_subject_requests Subject requests not closed yet, all tenants "
                "together, by state (open: not yet due; overdue: past due), as the consent "
                "views know them.",
                "# TYPE ledger_subject_requests gauge",
            ]
            lines += [
                f'ledger_subject_requests{{state="{state}"}} {n}'
                for state, n in open_requests.items()
            ]
        if intake is not None:  # Kafka mode's intake writer thread
            lines += intake_lines(intake) + kafka_client_lines()
        if writer_restarts is not None:  # embedded mode's writer process (api.writer_process)
            lines += [
                "# HELP ledger_writer_restarts_total Writer processes started after one ended.",
                "# TYPE ledger_writer_restarts_total counter",
                f"ledger_writer_restarts_total {writer_restarts}",
            ]
        return "\n".join(lines) + "\n"


def intake_lines(intake: IntakeStats) -> list[str]:
    """What the intake writer counts of the facts it took from the intake topic, and how far
    behind the topic's end it is: the HTTP counters above see none of those facts."""
    lines = [
        "# HELP ledger_intake_facts_accepted_total Facts taken from the intake topic and recorded.",
        "# TYPE ledger_intake_facts_accepted_total counter",
        f"ledger_intake_facts_accepted_total {intake.accepted}",
        "# HELP ledger_intake_facts_duplicate_total Facts taken from the intake topic that "
        "the ledger already held under their event_id: recorded once, before.",
        "# TYPE ledger_intake_facts_duplicate_total counter",
        f"ledger_intake_facts_duplicate_total {intake.duplicates}",
        "# HELP ledger_intake_facts_refused_total Records of the intake topic refused (to "
        "the rejected topic), by code.",
        "# TYPE ledger_intake_facts_refused_total counter",
    ]
    for code, n in sorted(dict(intake.rejected).items()):
        lines.append(f'ledger_intake_facts_refused_total{{code="{code}"}} {n}')
    lines += [
        "# HELP ledger_intake_keyed_by_reference_total Intake records keyed by their "
        "subject's reference in the clear (recorded all the same; the publisher should key "
        "by a hash).",
        "# TYPE ledger_intake_keyed_by_reference_total counter",
        f"ledger_intake_keyed_by_reference_total {intake.keyed_by_reference}",
        "# HELP ledger_intake_expired_unread_total Intake offsets deleted by the intake "
        "topic's retention before the writer read them: published facts lost.",
        "# TYPE ledger_intake_expired_unread_total counter",
        f"ledger_intake_expired_unread_total {intake.expired_unread}",
        "# HELP ledger_intake_restarts_total Intake writers started again after one failed in "
        "a way it did not expect (its committed batches stand; it reads on from them).",
        "# TYPE ledger_intake_restarts_total counter",
        f"ledger_intake_restarts_total {intake.restarts}",
        "# HELP ledger_intake_lag Offsets of the intake topic the writer has not committed "
        "yet, by partition, as of its last poll (records not taken yet, and any transaction "
        "markers among them).",
        "# TYPE ledger_intake_lag gauge",
    ]
    for partition, n in sorted(intake.lag.items()):
        lines.append(f'ledger_intake_lag{{partition="{partition}"}} {n}')
    return lines


def kafka_client_lines() -> list[str]:
    """What the process's Kafka clients did about brokers the cluster fenced under them."""
    from ledger.kafka.clients import fenced_broker_connections_closed

    return [
        "# HELP ledger_kafka_fenced_broker_connections_closed_total Connections of this "
        "process's Kafka clients closed because their broker left the cluster's metadata "
        "(fenced: hung or gone) while a request waited on them; each request was retried on "
        "the live brokers.",
        "# TYPE ledger_kafka_fenced_broker_connections_closed_total counter",
        f"ledger_kafka_fenced_broker_connections_closed_total {fenced_broker_connections_closed()}",
    ]


def projection_lag_lines(lag: int) -> list[str]:
    return [
        "# HELP ledger_projection_lag Log entries the consent views have not applied yet.",
        "# TYPE ledger_projection_lag gauge",
        f"ledger_projection_lag {lag}",
    ]


def worker_metrics(projection_lag: int | None, intake: IntakeStats) -> str:
    """What a Kafka-mode `worker` serves at /metrics (`worker --metrics-port`): the intake
    writer's counts and lag and, unless it runs without projections, the views' lag. It has
    no HTTP API, so none of the service's request and publish counters."""
    lines = [] if projection_lag is None else projection_lag_lines(projection_lag)
    return "\n".join(lines + intake_lines(intake) + kafka_client_lines()) + "\n"
