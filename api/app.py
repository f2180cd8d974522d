"""The HTTP service: thin routes over the application service and the consent views."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import problems
from api.access_log import AccessLog
from api.answers import answer, with_answers
from api.deps import Service, strict_query
from api.group_commit import GroupCommitter
from api.keys import ApiKeys
from api.metrics import Metrics
from api.request_guard import RequestGuard
from api.responses import OrjsonResponse
from api.routes import compliance, facts, subjects
from ledger.application import ConsentLedger
from ledger.errors import FactRejected
from ledger.file_identity import files_moved, moved_reason
from ledger.policy import PolicyVersion
from ledger.receipt import Outcome
from ledger.settings import Settings
from projections.requests import open_request_counts
from projections.views import Views

_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def keys_path(settings: Settings) -> Path:
    return settings.api_keys_path


def _writes(settings: Settings, ledger: ConsentLedger) -> Callable[..., list[Outcome]]:
    """The group commit's writer: in Kafka mode, refused at once for a few seconds after
    the broker did not take a write (`api.write_window`; imported only there, as kafka-python
    is)."""
    if settings.backend != "kafka":
        return ledger.record_received
    from api.write_window import WriteWindow

    return WriteWindow(ledger.record_received, problems.UNAVAILABLE_RETRY_AFTER_S)


def build_service(settings: Settings, stopping: Callable[[], bool] | None = None) -> Service:
    """`stopping`: whether the server is stopping (`consent-ledger serve`'s SIGTERM), which
    ends a question's Kafka-mode catch-up at once (503) rather than holding the shutdown
    until the broker's answer timeout."""
    ledger = ConsentLedger(settings)
    process = None
    try:
        if settings.backend == "embedded" and settings.http_writer == "process":
            from api.process_committer import ProcessCommitter
            from api.writer_process import WriterProcess

            process = WriterProcess(settings)
        access = AccessLog(settings.access_log_path, settings.access_log_days)
        access.prune()  # accesses past LEDGER_ACCESS_LOG_DAYS, kept while it was stopped
        service = Service(
            settings,
            ledger,
            Views(ledger, stopping=stopping, recheck_s=problems.UNAVAILABLE_RETRY_AFTER_S),
            ApiKeys(keys_path(settings), recheck_s=settings.api_key_recheck_ms / 1000),
            Metrics(),
            ProcessCommitter(process)
            if process is not None
            else GroupCommitter(_writes(settings, ledger)),
            writer_process=process,
            access=access,
        )
    except BaseException:
        # A start that fails midway leaves no writer process or open store behind (a test
        # or an embedding program goes on running after it).
        if process is not None:
            process.close()
        ledger.close()
        raise
    if settings.backend == "kafka":
        from ledger.kafka.intake_thread import IntakeThread
        from ledger.kafka.reading import never
        from ledger.kafka.recorder import KafkaLedgerRecorder
        from ledger.kafka.refusal_index import RefusalIndex

        recorder = ledger.ledger_recorder
        assert isinstance(recorder, KafkaLedgerRecorder)
        try:
            service.refusals = RefusalIndex(
                settings.refusals_path,
                recorder.link,
                settings.rejected_retention_ms,
                stopping=stopping or never,
                recheck_s=problems.UNAVAILABLE_RETRY_AFTER_S,
            )
        except BaseException:  # a refusals.db of another store: nothing left open behind
            close_service(service)
            raise
        service.intake = IntakeThread(ledger)
        service.intake.start()
    return service


def close_service(service: Service) -> None:
    if service.intake is not None:
        service.intake.close()
    if service.admin is not None:
        service.admin.close()
    if service.refusals is not None:
        service.refusals.close()
    service.writer.close()
    if service.writer_process is not None:
        service.writer_process.close()
    service.views.close()
    service.keys.close()
    if service.access is not None:
        service.access.close()
    service.ledger.close()


def create_app(
    settings: Settings | None = None, *, stopping: Callable[[], bool] | None = None
) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = service = build_service(settings, stopping)
        try:
            yield
        finally:
            close_service(service)

    app = FastAPI(
        # Off unless asked for: FastAPI's native OpenTelemetry asks the OpenTelemetry API on
        # every request whether providers are configured, 3% of the event loop's part of a
        # single publish (`python -m bench instructions --http`: 946,940 -> 915,320).
        telemetry=None if settings.http_telemetry else _NO_TELEMETRY,
        title="consent-ledger",
        version="1",
        description="Event-sourced consent ledger (contract: shared/CONTRACT.md).",
        lifespan=lifespan,
        # A path the contract does not name is a 404 problem, a trailing slash included: a
        # redirect to the path without it names the host and scheme the service saw, which
        # behind a TLS proxy that does not say so is http, and a client that followed it sent
        # its key and the fact in the clear.
        redirect_slashes=False,
    )
    app.add_exception_handler(problems.Problem, problems.on_problem)
    app.add_exception_handler(FactRejected, problems.on_rejected)
    app.add_exception_handler(RequestValidationError, problems.on_validation)
    app.add_exception_handler(StarletteHTTPException, problems.on_http)
    app.add_exception_handler(Exception, problems.on_unexpected)

    app.add_middleware(RequestGuard, max_body=settings.http_max_body)
    if settings.http_cors_origins:
        # Outermost: a browser's preflight is answered here, before the guard and the routes
        # (which would answer OPTIONS with 405). No cookies: the key travels in a header the
        # page sets, so no credentials mode.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.http_cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Next-Cursor", "Retry-After", "WWW-Authenticate"],
            max_age=600,
        )

    # Every authenticated route can answer with these problems; bodies over the limit get 413,
    # bodies declared as anything but JSON 415; bytes the server cannot read as a request,
    # 400 `malformed_request` (`api.http_protocol`, on any path).
    errors = problems.documented(400, 401, 403, 404, 405, 409, 413, 415, 422, 500, 503)
    app.include_router(facts.router, responses=errors)
    # The routes that ask the ledger questions refuse query parameters they do not take.
    asking = [Depends(strict_query)]
    app.include_router(subjects.router, responses=errors, dependencies=asking)
    app.include_router(compliance.router, responses=errors, dependencies=asking)

    @app.get(
        "/healthz", tags=["operations"], response_model=None, responses={200: answer("Health")}
    )
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=None,
        responses={200: answer("Ready"), **problems.documented(503)},
    )
    def readyz(request: Request) -> Response:
        service: Service = request.app.state.service
        try:
            service.ledger.ledger_recorder.head()
            service.views.store.max_tracking_id("ConsentLedger")
        except Exception as exc:
            return problems.respond(503, "not_ready", f"store unavailable ({type(exc).__name__})")
        moved = files_moved(service.ledger.opened_files)
        if moved:  # every write would be refused (`ledger.file_identity`)
            return problems.respond(503, "not_ready", moved_reason(moved))
        if not service.ledger.keystore.holds_store_master_key():
            return problems.respond(
                503, "not_ready", "the key store is under another master key: restart"
            )
        if settings.backend == "kafka":
            unready = kafka_unready(service)
            if unready is not None:
                return problems.respond(503, *unready)
        return OrjsonResponse({"status": "ready", "backend": settings.backend})

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics(request: Request) -> str:
        service: Service = request.app.state.service
        process = service.writer_process
        return service.metrics.render(
            projection_lag=service.views.lag(),
            writer_restarts=None if process is None else process.restarts,
            open_requests=open_requests(service),
            intake=None if service.intake is None else service.intake.writer.stats,
        )

    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_answers(plain_openapi(), {"Fact": facts.FACT_SCHEMA})
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's own way to extend it
    return app


def open_requests(service: Service) -> dict[str, int]:
    """The requests not closed yet, open and overdue, from the views as they are
    (a scrape does not catch them up; `ledger_projection_lag` says how far behind)."""

    def policies_of(name: str) -> Mapping[str, PolicyVersion]:
        tenant = service.ledger.tenant(name, shared=True)
        return tenant.policies if tenant else {}

    return open_request_counts(
        service.views.store,
        datetime.now(UTC),
        policies_of,
        service.settings.request_due_days,
        dict(service.settings.request_due_days_by_kind),
    )


def kafka_unready(service: Service) -> tuple[str, str] | None:
    """Why the Kafka side cannot serve writes: fenced, writer stopped, broker or topics gone,
    ledger partitions without enough replicas, or the controllers without a quorum."""
    intake = service.intake
    fenced = getattr(service.ledger.ledger_recorder, "fenced", False)
    if fenced or (intake is not None and intake.fenced):
        return "writer_fenced", "another writer owns the ledger partitions"
    if intake is not None and intake.ended:
        return "not_ready", f"the intake writer stopped: {intake.ended}"
    if intake is not None and intake.failed:
        return "not_ready", f"the intake writer stopped ({intake.failed}); starting it again"
    refused = getattr(service.ledger.ledger_recorder, "access_refused", None)
    if refused:  # the writer's last append or taking of the partitions: no write can pass
        return "kafka_access_refused", refused
    # One probe at a time asks the cluster (probes run in the server's thread pool, side by
    # side): a probe whose client failed closes it, and another's question on it failed
    # then, a broker said unreachable that had answered.
    with service.readiness_lock:
        return cluster_unready(service)


def cluster_unready(service: Service) -> tuple[str, str] | None:
    """`kafka_unready`'s questions to the cluster, on the service's admin client."""
    from kafka.errors import TopicAuthorizationFailedError

    from ledger.kafka.acls import WHERE_LISTED
    from ledger.kafka.clients import AdminClient, secured
    from ledger.kafka.names import Topics
    from ledger.kafka.readiness import (
        asked_of_some_broker,
        quorum_problem,
        unwritable_partitions,
    )

    topics = Topics.of(service.settings.topic_prefix)
    try:
        if service.admin is None:
            # Bounded: a readiness probe must answer within its own timeout.
            service.admin = AdminClient(
                bootstrap_servers=secured(service.settings),
                request_timeout_ms=3000,
                bootstrap_timeout_ms=3000,
            )
        described = asked_of_some_broker(
            service.admin,
            lambda: service.admin.describe_topics([topics.intake, topics.ledger, topics.rejected]),
        )
    except Exception as exc:
        if service.admin is not None:
            service.admin.close()
            service.admin = None
        return "broker_unreachable", f"the Kafka broker did not answer ({type(exc).__name__})"
    hidden = [
        t["name"] for t in described if t.get("error_code") == TopicAuthorizationFailedError.errno
    ]
    if hidden:
        return (
            "kafka_access_refused",
            "the Kafka cluster refused this client the ACLs of topics "
            f"{', '.join(sorted(hidden))}; {WHERE_LISTED}",
        )
    missing = [t["name"] for t in described if t.get("error_code") or not t.get("partitions")]
    if missing:
        return "topics_missing", f"topics not available: {', '.join(sorted(missing))}"
    unwritable = unwritable_partitions(described, topics.ledger, service.settings.min_insync)
    if unwritable is not None:
        return unwritable
    # Last: when the quorum is lost the metadata above is a surviving broker's stale cache.
    try:
        return quorum_problem(service.admin)
    except Exception as exc:
        # Its answers are checked (`quorum_verdict`); what raises is the client itself: its
        # network thread stopped under it (another probe's closed the client), say. A
        # probe answers what it can, never a 500; the next makes a new client.
        if service.admin is not None:
            service.admin.close()
            service.admin = None
        return (
            "broker_unreachable",
            f"the Kafka brokers were not asked about the quorum ({type(exc).__name__})",
        )
