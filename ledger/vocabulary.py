"""Closed vocabularies from the contract and the policy (§ numbers are the policy's).

Purposes and categories are *not* closed here: they belong to a policy version (data, not
code). What is listed here is the default catalogue and the closed sets the contract fixes.
"""

from __future__ import annotations

# §2.1 data categories of the default catalogue.
DEFAULT_CATEGORIES = (
    "full_name",
    "email",
    "phone",
    "network_device",
    "cookies",
    "user_provided",
)

# §4.1 legal bases.
LEGAL_BASES = frozenset({"consent", "contract", "legal_obligation"})

CHANNELS = frozenset(
    {
        "web_form",
        "cookie_banner",
        "mobile_app",
        "api",
        "email",
        "phone_call",
        "paper",
        "in_person",
        "import",
    }
)

# §5.1 grounds for passing data to third parties.
TRANSFER_GROUNDS = frozenset({"legal_requirement", "contract_performance", "explicit_consent"})

ERASURE_GROUNDS = frozenset(
    {
        "subject_request",
        "purpose_achieved",
        "consent_withdrawn",
        "consent_expired",
        "court_decision",
        "retention_expired",
    }
)

# §7.1 subject rights, as requests.
REQUEST_KINDS = frozenset({"information", "rectification", "erasure", "withdrawal", "objection"})
# Where a request stands in the register (projections.requests): not closed and not yet
# due, not closed and past due, closed by its deadline, closed after it.
REQUEST_STATES = ("open", "overdue", "closed", "closed_late")
REQUEST_OUTCOMES = frozenset({"fulfilled", "refused"})

FACT_TYPES = (
    "policy.published",
    "consent.granted",
    "consent.withdrawn",
    "consent.corrected",
    "subject.rectified",
    "subject.erased",
    "transfer.recorded",
    "request.received",
    "request.closed",
    "complaint.lodged",
)

# Personal-data fields a grant or a rectification may carry (§2.1); others are refused so a
# typo cannot smuggle data past the catalogue.
PERSONAL_DATA_FIELDS = frozenset(
    {"full_name", "email", "phone", "address", "birth_date", "company", "position", "other"}
)
