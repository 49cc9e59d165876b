"""A request served by the live gateway leaves a route in its organization's audit chain
that holds the facts of the moment and verifies offline."""

from __future__ import annotations

import openai

from accounts import audit, audit_verify
from accounts.audit import AuditEntry

EIGHT_B = "llama-3.1-8b-instruct"


def test_a_served_request_is_proven_to_have_run_where_its_policy_allowed(mesh, api_key, usage):
    client = openai.OpenAI(base_url=f"{mesh.gateway_url}/v1", api_key=api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=EIGHT_B,
        messages=[{"role": "user", "content": "Where am I served?"}],
        max_tokens=4,
        extra_body={"tesseract": {"jurisdictions": ["EU"], "compliance": ["gdpr"]}},
    )
    info = raw.parse().model_extra["tesseract"]
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
