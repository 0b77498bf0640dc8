"""What a charge tells Stripe (and the customer's receipts) about itself: its token and dollar
range, and which projects used the tokens it covers.

Fixed when the charge is created and sent unchanged with every attempt, so a resend under the
same Idempotency-Key has the same body.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import func
from sqlmodel import Session, col, select

from metering.models import UsageDaily

# Stripe allows 50 metadata keys; 40 projects by name, the rest summed under "other".
MAX_PROJECTS_IN_METADATA = 40


def project_tokens(session: Session, org_id: str) -> dict[str, int]:
    """The org's cumulative tokens per project ("" = not attributed)."""
    rows = session.exec(
        select(UsageDaily.project_id, func.sum(UsageDaily.tokens))
        .where(UsageDaily.org_id == org_id)
        .group_by(col(UsageDaily.project_id))
    ).all()
    return {project or "": int(tokens) for project, tokens in rows}


def charge_metadata(
    org_id: str,
    seq: int,
    tokens: tuple[int, int],
    dollars: tuple[int, int],
    projects: Mapping[str, int],
    before: Mapping[str, int],
) -> dict[str, str]:
    """Metadata of charge `seq`: cumulative `tokens` and `dollars` (from, to), and the tokens
    per project since `before` (the previous covering charge's per-project totals)."""
    metadata = {
        "org_id": org_id,
        "charge_seq": str(seq),
        "tokens_from": str(tokens[0]),
        "tokens_to": str(tokens[1]),
        "dollars_from": str(dollars[0]),
        "dollars_to": str(dollars[1]),
        "price": "94 cents per 1M tokens",
    }
    delta = {p: t - before.get(p, 0) for p, t in projects.items() if t - before.get(p, 0)}
    ranked = sorted(delta.items(), key=lambda item: (-item[1], item[0]))
    for project, used in ranked[:MAX_PROJECTS_IN_METADATA]:
        metadata[f"project:{project or 'none'}"] = str(used)
    rest = sum(used for _, used in ranked[MAX_PROJECTS_IN_METADATA:])
    if rest:
        metadata["project:other"] = str(rest)
    return metadata
