"""Why a fact was refused: one stable, machine-readable code per rule broken.

Codes are part of the public contract (HTTP problem+json `code`, CLI messages, the rejected
topic). Messages never contain personal data: they name fields, types and event ids only.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    # Malformed input.
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    OVERSIZE = "oversize"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_FIELD = "unknown_field"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_TIMESTAMP = "invalid_timestamp"
    CONTROL_CHARACTER = "control_character"
    # Tenancy.
    UNKNOWN_TENANT = "unknown_tenant"
    TENANT_MISMATCH = "tenant_mismatch"
    TENANT_EXISTS = "tenant_exists"
    # Policy catalogue.
    UNKNOWN_POLICY_VERSION = "unknown_policy_version"
    POLICY_VERSION_EXISTS = "policy_version_exists"
    POLICY_NOT_IN_EFFECT = "policy_not_in_effect"
    UNKNOWN_PURPOSE = "unknown_purpose"
    UNKNOWN_CATEGORY = "unknown_category"
    # Consent rules.
    PURPOSE_NOT_IN_FORCE = "purpose_not_in_force"
    CORRECTION_TARGET_UNKNOWN = "correction_target_unknown"
    CORRECTION_TARGET_OTHER_SUBJECT = "correction_target_other_subject"
    CORRECTION_TARGET_NOT_CONSENT = "correction_target_not_consent"
    TRANSFER_WITHOUT_CONSENT = "transfer_without_consent"
    SUBJECT_ERASED = "subject_erased"
    OCCURRED_IN_FUTURE = "occurred_in_future"
    EXPIRY_BEFORE_GRANT = "expiry_before_grant"
    # Subject requests.
    REQUEST_EXISTS = "request_exists"
    UNKNOWN_REQUEST = "unknown_request"
    REQUEST_ALREADY_CLOSED = "request_already_closed"
    REQUEST_DUE_BEFORE_RECEIVED = "request_due_before_received"
    REQUEST_CLOSED_BEFORE_RECEIVED = "request_closed_before_received"
    # Idempotency.
    EVENT_ID_CONFLICT = "event_id_conflict"
    # Subjects addressed by sid.
    UNKNOWN_SUBJECT = "unknown_subject"
    # Questions: "as known at" an instant still to come.
    KNOWN_AT_IN_FUTURE = "known_at_in_future"
    # Kafka intake: a record that made the writer fail on its own (never blocks a partition).
    PROCESSING_FAILED = "processing_failed"


class FactRejected(Exception):
    """A fact broke a rule or was malformed; nothing of it was recorded."""

    def __init__(self, code: Code, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[type[FactRejected], tuple[Code, str, str | None]]:
        # Pickled whole (the HTTP service's writer process sends refusals back by pipe);
        # the default would rebuild it from `args`, which hold the message only.
        return (type(self), (self.code, self.message, self.field))

    def as_dict(self) -> dict[str, str]:
        out = {"code": self.code.value, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out

    def __repr__(self) -> str:
        return f"FactRejected({self.code.value!r}, {self.message!r})"
