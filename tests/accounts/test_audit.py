"""Proof of residency: every route and operator action is chained once, tampering is
found, and a tenant downloads only its own proofs, which verify offline."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts import audit, audit_verify, services
from accounts.audit import AuditChain, AuditEntry, Draft
from billing import metering
from billing.services import usage_events_drain
from tests.billing import test_usage_metering as metering_tests
from tests.conftest import login

pytestmark = pytest.mark.redis

stream = metering_tests.stream  # the fixture: a usage stream of the test's own
publish, record = metering_tests.publish, metering_tests.record

EU = {
    "certifications": ["gdpr", "iso27001"],
    "jurisdictions": ["EEA", "EU", "NL"],
    "country": "NL",
}


DEPLOYMENT = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"
PLAN = {"strategy": "deadline", "snapshot_version": "3.1", "ranked": [DEPLOYMENT, "b"]}


def eu_record(org, request_id: str, **changes) -> metering.UsageRecord:
    fields = {
        "constraints": {"jurisdictions": ["EU"], "compliance": ["gdpr"], "max_ttft_ms": 200.5},
        "backend_policy": EU,
        "plan": PLAN,
    }
    return record(org, request_id, **{**fields, **changes})


def route(org, request_id: str, **payload) -> Draft:
    facts = {
        "constraints": {"jurisdictions": ["EU"]},
        "backend": {"deployment": "d", "region": "westeurope", **EU},
        **payload,
    }
    return Draft(action="route", kind="route", request_id=request_id, payload=facts)


def test_a_request_is_chained_once_however_often_its_record_is_delivered(acme, stream):
    publish(eu_record(acme, "req-1"), eu_record(acme, "req-1"), eu_record(acme, "req-2"))
    usage_events_drain(client=stream, consumer="first", max_batches=0)  # makes the group
    # A worker reads the records, stores them, and dies before acknowledging them.
    from billing.services import usage_events_record

    entries = stream.xreadgroup(metering.GROUP, "doomed", {metering.STREAM: ">"}, count=3)
    usage_events_record([metering.decode(fields[b"r"]) for _, fields in entries[0][1]])
    usage_events_drain(client=stream, consumer="survivor", claim_idle_ms=0)
    usage_events_drain(client=stream, consumer="survivor", claim_idle_ms=0)

    routes = AuditEntry.objects.filter(kind="route").order_by("seq")
    assert [e.request_id for e in routes] == ["req-1", "req-2"]
    assert AuditChain.objects.get(key=audit.chain_key(acme.pk)).seq == routes.last().seq
    assert audit.verify_stored().ok


def test_a_route_entry_holds_the_facts_of_the_moment(acme, stream):
    publish(eu_record(acme, "req-1"))
    usage_events_drain(client=stream)
    entry = AuditEntry.objects.get(request_id="req-1")
    assert entry.org == acme
    assert entry.payload["backend"] == {
        "deployment": DEPLOYMENT,
        "region": "westeurope",
        "cluster": "westeurope-tesseract-nvidia-h100",
        "chip": "nvidia-h100",
        **EU,
    }
    assert entry.payload["constraints"]["max_ttft_ms"] == "200.5"  # no floats in the chain
    assert entry.payload["plan"] == PLAN
    assert entry.payload["plan_hash"] == audit_verify.plan_hash(PLAN)
    assert audit.verify_stored().ok


def test_two_organizations_have_chains_of_their_own(acme, globex, stream):
    publish(eu_record(acme, "a-1"), eu_record(globex, "g-1"), eu_record(acme, "a-2"))
    usage_events_drain(client=stream)
    seqs = {e.request_id: (e.chain, e.seq) for e in AuditEntry.objects.filter(kind="route")}
    acme_chain, globex_chain = audit.chain_key(acme.pk), audit.chain_key(globex.pk)
    assert seqs["a-2"] == (acme_chain, seqs["a-1"][1] + 1)
    assert seqs["g-1"][0] == globex_chain


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_extend_one_chain_without_a_gap_or_a_duplicate(acme):
    """Two drains redelivering the same requests, and a key revocation, all at once."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def drain(worker: int) -> None:
        try:
            for i in range(10):
                audit.append({acme.pk: [route(acme, f"req-{i}"), route(acme, f"req-{worker}-{i}")]})
                audit.record("key.revoke", org_id=acme.pk, actor=f"worker-{worker}")
        finally:
            connection.close()

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(drain, range(3)))
    routes = AuditEntry.objects.filter(kind="route")
    assert routes.count() == 10 + 3 * 10
    assert AuditEntry.objects.filter(action="key.revoke").count() == 3 * 10
    assert audit.verify_stored().ok


ALTERATIONS = {
    "chain": "org:999999",
    "seq": 999,
    "at": datetime(2020, 1, 1, tzinfo=UTC),
    "kind": "action",
    "action": "key.create",
    "actor": "mallory@example.com",
    "reason": "nothing to see",
    "request_id": "req-forged",
    "payload": {"constraints": {}, "backend": None},
    "prev_hash": "f" * 64,
    "hash": "e" * 64,
    "org_id": 999999,
}


@pytest.mark.parametrize("field", sorted(ALTERATIONS))
def test_editing_any_field_of_any_row_is_found_and_the_row_named(acme, field):
    audit.append({acme.pk: [route(acme, f"req-{i}") for i in range(3)]})
    assert audit.verify_stored().ok
    middle = AuditEntry.objects.get(request_id="req-1")
    AuditEntry.objects.filter(pk=middle.pk).update(**{field: ALTERATIONS[field]})
    report = audit.verify_stored()
    assert not report.ok
    assert any(p.startswith(f"row {middle.pk} ") for p in report.problems), report.problems


def test_a_deleted_row_is_found_in_the_middle_and_at_the_end(acme):
    audit.append({acme.pk: [route(acme, f"req-{i}") for i in range(3)]})
    AuditEntry.objects.filter(request_id="req-1").delete()
    assert any("gap" in p for p in audit.verify_stored().problems)
    AuditEntry.objects.filter(request_id="req-2").delete()
    problems = audit.verify_stored().problems
    assert any("is not its last entry" in p for p in problems), problems


def test_a_route_outside_its_policy_fails_verification(acme):
    audit.append({acme.pk: [route(acme, "req-ok")]})
    outside = route(acme, "req-us", constraints={"jurisdictions": ["EU"], "compliance": ["hipaa"]})
    outside.payload["backend"].update(jurisdictions=["US"], country="US", region="eastus")
    audit.append({acme.pk: [outside]})
    problems = audit.verify_stored().problems
    assert len(problems) == 2, problems
    assert all("request req-us" in p and "policy not met" in p for p in problems)
    assert any("lacks the certification(s) hipaa" in p for p in problems)
    assert any("region eastus (jurisdictions US) is not in EU" in p for p in problems)


def test_policy_checks_regions_and_countries_when_asked():
    backend = {"deployment": "d", "region": "eastus", "country": "US", "jurisdictions": ["US"]}
    assert (
        audit_verify.policy_violations(
            {"constraints": {"regions": ["eastus"], "countries": ["US"]}, "backend": backend}
        )
        == []
    )
    problems = audit_verify.policy_violations(
        {"constraints": {"regions": ["westeurope"], "countries": ["NL"]}, "backend": backend}
    )
    assert problems == ["country US is not in NL", "region eastus is not in westeurope"]
    assert (
        audit_verify.policy_violations({"constraints": {"regions": ["x"]}, "backend": None}) == []
    )


# -------------------------------------------------------------------------- downloads


def test_a_member_downloads_a_requests_proof_and_charlie_gets_404(
    acme, globex, alice, bob, charlie
):
    audit.append({acme.pk: [route(acme, "req-acme")], globex.pk: [route(globex, "req-globex")]})
    url = f"/orgs/{acme.slug}/proof/requests/req-acme/"
    for member in (alice, bob):
        response = login(member).get(url)
        assert response.status_code == 200
        assert "attachment" in response["Content-Disposition"]
        assert audit_verify.verify_text(response.content.decode()).ok
    assert login(charlie).get(url).status_code == 404
    # Nor through his own organization, nor the other way round.
    assert login(charlie).get(f"/orgs/{globex.slug}/proof/requests/req-acme/").status_code == 404
    assert login(alice).get(f"/orgs/{acme.slug}/proof/requests/req-globex/").status_code == 404
    assert login(charlie).get(f"/orgs/{acme.slug}/proof/months/2026-11/").status_code == 404


def test_a_months_proof_holds_only_the_organizations_own_entries(acme, globex, alice):
    audit.append({acme.pk: [route(acme, "req-a")], globex.pk: [route(globex, "req-g")]})
    month = audit.AuditEntry.objects.get(request_id="req-a").at.strftime("%Y-%m")
    response = login(alice).get(f"/orgs/{acme.slug}/proof/months/{month}/")
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()
    lines = [json.loads(line) for line in text.splitlines()]
    assert {e["chain"] for e in lines} == {audit.chain_key(acme.pk)}
    assert "req-a" in text
    assert "req-g" not in text
    assert audit_verify.verify_text(text).ok
    assert login(alice).get(f"/orgs/{acme.slug}/proof/months/2026-13/").status_code == 404


def test_the_url_names_other_pages_link_to(acme):
    from django.urls import reverse

    assert reverse("audit:request_proof", args=[acme.slug, "req-1"]).endswith("/req-1/")
    assert reverse("audit:month_proof", args=[acme.slug, "2026-11"]).endswith("/2026-11/")
    assert reverse("audit:verifier").endswith("audit_verify.py")


# ------------------------------------------------------------------- offline checking


def _export(tmp_path: Path, org) -> Path:
    month = AuditEntry.objects.filter(org=org).first().at.strftime("%Y-%m")
    path = tmp_path / "proof.jsonl"
    path.write_text("".join(audit.month_lines(org_id=org.pk, month=month)), encoding="utf-8")
    return path


def _standalone(path: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """The verifier as a tenant runs it: a copy of the file, Python in isolated mode
    (no site-packages, no project on the path)."""
    script = path.parent / "audit_verify.py"
    script.write_bytes(Path(audit_verify.__file__).read_bytes())
    return subprocess.run(
        [sys.executable, "-I", "-S", str(script), str(path), *more],
        capture_output=True, text=True, timeout=60, check=False, cwd=path.parent,
    )  # fmt: skip


def test_the_standalone_verifier_accepts_an_exported_month_and_finds_a_tampered_line(
    acme, tmp_path
):
    services.api_key_create(org=acme, name="ci")
    audit.append({acme.pk: [route(acme, f"req-{i}") for i in range(3)]})
    path = _export(tmp_path, acme)
    done = _standalone(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 routes met their policy" in done.stdout

    lines = path.read_text(encoding="utf-8").splitlines()
    number = next(i for i, line in enumerate(lines, 1) if '"req-1"' in line)
    lines[number - 1] = lines[number - 1].replace('"westeurope"', '"eastus"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = _standalone(path)
    assert done.returncode == 1
    assert f"line {number} (seq" in done.stdout
    assert "request req-1" in done.stdout
    assert "altered" in done.stdout


def test_manage_py_audit_verify_checks_files_and_the_stored_log(acme, tmp_path, capsys):
    audit.append({acme.pk: [route(acme, "req-1")]})
    path = _export(tmp_path, acme)
    call_command("audit_verify", "--file", str(path))
    call_command("audit_verify")
    assert "OK" in capsys.readouterr().out
    AuditEntry.objects.filter(request_id="req-1").update(actor="mallory")
    with pytest.raises(CommandError, match="verification failed"):
        call_command("audit_verify")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    lines[-1]["reason"] = "rewritten"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(CommandError, match="verification failed"):
        call_command("audit_verify", "--file", str(path))


# -------------------------------------------------------------------- operator actions


def actions(org=None) -> list[tuple[str, str, str]]:
    rows = AuditEntry.objects.filter(kind="action", org=org).order_by("seq")
    return [(e.action, e.actor, e.reason) for e in rows]


def test_key_creation_revocation_and_deletion_are_chained_with_who(acme, alice, bob):
    issued = services.api_key_create(org=acme, name="ci", created_by=alice)
    services.api_key_revoke(api_key=issued.api_key, by=bob)
    services.api_key_revoke(api_key=issued.api_key, by=bob)  # twice is once
    issued.api_key.delete()
    keyed = [a for a in actions(acme) if a[0].startswith("key.")]
    assert keyed == [
        ("key.create", "alice@example.com", ""),
        ("key.revoke", "bob@example.com", ""),
        ("key.delete", "", ""),
    ]
    assert audit.verify_stored().ok


def test_a_tier_change_is_chained_with_who_and_from_what(acme, alice):
    from billing import subscriptions
    from billing.models import SlaTier

    subscriptions.billing_account_ensure(org=acme)
    current = subscriptions.billing_account_ensure(org=acme).tier
    other = SlaTier.objects.exclude(pk=current.pk).order_by("slug").first()
    subscriptions.tier_change(org=acme, tier=other, changed_by=alice)
    subscriptions.tier_change(org=acme, tier=other, changed_by=alice)  # no change, no entry
    entry = AuditEntry.objects.filter(org=acme, action="tier.change").order_by("seq").last()
    assert (entry.actor, entry.payload["previous"], entry.payload["tier"]) == (
        "alice@example.com",
        current.slug,
        other.slug,
    )
    assert AuditEntry.objects.filter(org=acme, action="tier.change", actor=entry.actor).count() == 1


def test_an_operator_action_goes_to_the_operator_chain_with_who_and_why(acme, alice):
    """The call the operator log makes for every action (`record_operator_action`)."""
    audit.record(
        "drain", actor=alice, reason="fibre cut", target="region:westeurope",
        details={"drained": True},
    )  # fmt: skip
    audit.record("undrain", actor=None, reason="", target="region:westeurope")
    assert actions() == [
        ("drain", "alice@example.com", "fibre cut"),
        ("undrain", "", ""),
    ]
    entry = AuditEntry.objects.get(action="drain")
    assert (entry.chain, entry.org_id) == (audit.OPERATOR_CHAIN, None)
    assert entry.payload == {"target": "region:westeurope", "details": {"drained": True}}
    assert not AuditEntry.objects.for_org(acme).filter(action__in=["drain", "undrain"]).exists()
    assert audit.verify_stored().ok


def test_an_action_in_the_operator_log_is_chained_in_the_same_transaction(alice):
    from accounts.models import OperatorAction
    from accounts.operator_actions import record_operator_action

    record_operator_action(alice, "drain", "region:westeurope", "fibre cut")
    logged = OperatorAction.objects.get()
    chained = AuditEntry.objects.get(chain=audit.OPERATOR_CHAIN)
    assert (chained.action, chained.actor, chained.reason) == ("drain", alice.email, "fibre cut")
    assert chained.payload["target"] == logged.target == "region:westeurope"
    with pytest.raises(ValueError, match="longer than"):
        record_operator_action(alice, "drain", "region:eastus", "x" * 501)
    assert (
        OperatorAction.objects.count()
        == AuditEntry.objects.filter(chain=audit.OPERATOR_CHAIN).count()
        == 1
    )  # a refused action is in neither
    assert audit.verify_stored().ok


def test_a_months_proof_streams_in_chunks_from_the_web_process(acme, alice, monkeypatch):
    """Under ASGI (the web process) the file is read from the database a chunk at a time."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    from accounts import audit_views

    monkeypatch.setattr(audit_views, "CHUNK_LINES", 2)
    audit.append({acme.pk: [route(acme, f"req-{i}") for i in range(5)]})
    month = AuditEntry.objects.get(request_id="req-0").at.strftime("%Y-%m")
    client = AsyncClient()
    client.force_login(alice)
    response = async_to_sync(client.get)(f"/orgs/{acme.slug}/proof/months/{month}/")
    assert response.status_code == 200
    assert response.is_async

    async def parts() -> list[str]:
        return [part.decode() async for part in response.streaming_content]

    chunks = async_to_sync(parts)()
    assert len(chunks) >= 3  # 2 lines each: the header, and at least 5 entries
    text = "".join(chunks)
    assert audit_verify.verify_text(text).ok
    assert text.count('"kind": "route"') == 5


def test_a_requests_proof_is_shown_to_be_a_link_of_its_months_chain(acme, tmp_path):
    audit.append({acme.pk: [route(acme, f"req-{i}") for i in range(3)]})
    month = _export(tmp_path, acme)
    single = tmp_path / "req-1.jsonl"
    single.write_text("".join(audit.request_lines(org=acme, request_id="req-1") or []))
    done = _standalone(single, "--within", str(month))
    assert done.returncode == 0, done.stdout + done.stderr

    # A forged proof, rehashed to be consistent on its own, is not in the month's chain.
    header, entry = (json.loads(line) for line in single.read_text().splitlines())
    entry["payload"]["backend"]["region"] = "eastus"
    entry["hash"] = audit_verify.entry_hash(entry)
    single.write_text(json.dumps(header) + "\n" + json.dumps(entry) + "\n")
    assert _standalone(single).returncode == 0
    done = _standalone(single, "--within", str(month))
    assert done.returncode == 1
    assert f"not in {month} as it is here" in done.stdout


def test_the_admin_shows_the_log_and_cannot_change_it(acme):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from accounts.models import User
    from tests.conftest import PASSWORD

    ops = User.objects.create_superuser("ops@example.com", PASSWORD)
    TOTPDevice.objects.create(user=ops, confirmed=True)
    client = login(ops)
    client.post("/account/2fa/verify/", {"token": services.backup_codes_regenerate(user=ops)[0]})
    audit.append({acme.pk: [route(acme, "req-1")]})
    entry = AuditEntry.objects.get(request_id="req-1")
    listing = client.get("/admin/accounts/auditentry/")
    assert listing.status_code == 200
    assert "req-1" in listing.content.decode()
    delete = client.post(f"/admin/accounts/auditentry/{entry.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()
