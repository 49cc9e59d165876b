"""The log of operator actions: who did what to which target, when, and why.

One function writes it, `record_operator_action`, and every operator action goes
through it (the console's kill switch, the admin's and `manage.py drain`, placement
decisions). Each record is also appended, in the same transaction, to the operator
chain of the hash-chained audit log (`accounts.audit`), so it can be proven later.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from accounts import audit
from accounts.models import OperatorAction, User

#: the longest reason kept (the console's form says so)
REASON_MAX = 500


def record_operator_action(
    actor: User | None,
    action: str,
    target: str,
    reason: str,
    *,
    details: dict[str, Any] | None = None,
) -> OperatorAction:
    """Record one operator action. `actor` None: the system or a command line.

    `action` names what was done (`drain`, `undrain`, `placement.apply`, …), `target`
    what it was done to (`region:westeurope`, `deployment:<slug>`, …), `reason` why, in
    the operator's words. Raises ValueError for an empty action or target, or a reason
    longer than `REASON_MAX`; nothing is recorded then.
    """
    action, target, reason = action.strip(), target.strip(), reason.strip()
    if not action or not target:
        raise ValueError("an operator action needs an action and a target")
    if len(reason) > REASON_MAX:
        raise ValueError(f"the reason is longer than {REASON_MAX} characters")
    with transaction.atomic():
        entry = OperatorAction.objects.create(
            actor=actor,
            actor_email=actor.email if actor is not None else "",
            action=action[:40],
            target=target[:200],
            reason=reason,
            details=details or {},
        )
        audit.record(
            entry.action, actor=actor, reason=reason, target=entry.target, details=details or {}
        )
    return entry
