"""A request served by the live gateway leaves a route in its organization's audit chain
that holds the facts of the moment and verifies offline."""

from __future__ import annotations

import openai

from accounts import audit, audit_verify
from accounts.audit import AuditEntry

EIGHT_B = "llama-3.1-8b-instruct"


def ask(mesh, api_key: str, content: str, **options) -> dict:
    """One 8B request through the live gateway with `options` as its `tesseract` object;
    the answer's `tesseract` object."""
    client = openai.OpenAI(base_url=f"{mesh.gateway_url}/v1", api_key=api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=EIGHT_B,
        messages=[{"role": "user", "content": content}],
        max_tokens=4,
        extra_body={"tesseract": options},
    )
    return raw.parse().model_extra["tesseract"]


def test_a_served_request_is_proven_to_have_run_where_its_policy_allowed(mesh, api_key, usage):
    info = ask(mesh, api_key, "Where am I served?", jurisdictions=["EU"], compliance=["gdpr"])
    [event] = usage()

    entry = AuditEntry.objects.get(request_id=info["request_id"])
    assert entry.org_id == event.org_id
    backend = entry.payload["backend"]
    assert backend["deployment"] == info["route"]["backend"]
    assert backend["region"] == info["route"]["region"]
    assert "EU" in backend["jurisdictions"]
    assert "gdpr" in backend["certifications"]
    assert backend["country"] == mesh.spec.regions[backend["region"]].country_code
    assert entry.payload["constraints"]["jurisdictions"] == ["EU"]
    plan = entry.payload["plan"]
    assert plan["ranked"][0] == backend["deployment"]
    assert entry.payload["plan_hash"] == audit_verify.plan_hash(plan)

    proof = "".join(audit.request_lines(org=event.org, request_id=event.request_id) or [])
    report = audit_verify.verify_text(proof)
    assert report.ok, report.problems
    assert report.routes == 1


def test_a_late_request_is_recorded_as_having_accepted_a_late_answer(mesh, api_key, usage):
    info = ask(mesh, api_key, "Late is fine.", max_ttft_ms=0.001, allow_relaxed_deadline=True)
    assert info["degraded"]["kind"] == "relaxed_deadline"
    [event] = usage()
    # what the request page routes again, and what the proof holds
    assert event.constraints["allow_relaxed_deadline"] is True
    entry = AuditEntry.objects.get(request_id=info["request_id"])
    assert entry.payload["constraints"]["allow_relaxed_deadline"] is True
    assert "prefer_cost_over_latency" not in event.constraints  # not asked: not stored
