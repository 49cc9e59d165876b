"""Monthly invoices from a month of real traffic (the Azure LLM inference trace, code).

The trace's first 3,000 requests (an hour of Azure's 2023 code-completion service) are
stretched over March 2026 and shared among four organizations on different tiers, each
served with a different latency and failure profile. The invoices must match, to the
cent, what this file computes on its own with exact fractions; SLA credits must appear
exactly where an objective was missed.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path

import pytest
import time_machine
from django.core.management import call_command

from accounts import services as account_services
from accounts.models import Membership, Role
from backends.demo import demo_world_load
from backends.models import Deployment
from billing import invoicing, money_tasks, subscriptions
from billing.models import Invoice, InvoiceLine, SlaTier, UsageEvent
from tests.billing.money import record, usage
from tests.conftest import login

TRACE = Path(__file__).resolve().parents[2] / "bench" / "data" / "azure_llm_inference_2023_code.csv"
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
SWITCH = datetime(2026, 3, 15, 9, 30, tzinfo=UTC)  # initech: Pro → Enterprise


@dataclass(frozen=True)
class Profile:
    """How an org's requests were served: TTFT = base + per-token × prompt; every
    `fail_every`-th request fails midway; every 7th asks for a deadline on its first token."""

    ttft_base_ms: float
    ttft_per_token_ms: float
    fail_every: int | None
    asked_ttft_ms: int


PROFILES = {
    "acme": Profile(20, 0.1, 40, 300),  # Free: poor service, but Free promises nothing
    "globex": Profile(20, 0.1, 100, 1000),  # Pro: fast enough (≤ 764 ms < 800), 99% available
    "initech": Profile(10, 0.01, None, 300),  # Pro, then Enterprise: meets everything
    "hooli": Profile(20, 0.1, None, 1000),  # Enterprise: ~10% of first tokens over 500 ms
}


def trace(n: int) -> list[tuple[float, int, int]]:
    with TRACE.open() as f:
        rows = list(csv.DictReader(f))[:n]
    stamps = [datetime.strptime(r["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f") for r in rows]
    t0 = stamps[0]
    return [
        ((s - t0).total_seconds(), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
        for s, r in zip(stamps, rows, strict=True)
    ]


@pytest.fixture
def deployments(db) -> list[Deployment]:
    demo_world_load()
    chosen, seen = [], set()
    for d in Deployment.objects.select_related("model", "cluster__region", "chip").order_by("slug"):
        key = (d.model.slug, d.cluster.region.slug)
        if d.price_input_per_mtok > 0 and key not in seen and len(chosen) < 5:
            seen.add(key)
            chosen.append(d)
    assert len(chosen) == 5
    return chosen


@pytest.fixture
def orgs(acme, globex, alice, charlie):
    initech = account_services.organization_create(name="Initech", owner=alice)
    hooli = account_services.organization_create(name="Hooli", owner=charlie)
    for org in (acme, globex, initech, hooli):  # accounts open before the month
        org.billing_account.created_at = MARCH - timedelta(days=30)
        org.billing_account.save()
        org.tier_changes.update(effective_at=MARCH - timedelta(days=30))
    pro, enterprise = SlaTier.objects.get(slug="pro"), SlaTier.objects.get(slug="enterprise")
    subscriptions.tier_change(org=globex, tier=pro, at=MARCH - timedelta(days=3))
    subscriptions.tier_change(org=initech, tier=pro, at=MARCH - timedelta(days=3))
    subscriptions.tier_change(org=initech, tier=enterprise, at=SWITCH)
    subscriptions.tier_change(org=hooli, tier=enterprise, at=MARCH - timedelta(days=3))
    return {"acme": acme, "globex": globex, "initech": initech, "hooli": hooli}


def replay(orgs, deployments, n: int = 3000):
    """The trace, stretched over March and dealt out round robin; returns the records."""
    rows = trace(n)
    span = rows[-1][0]
    month = (APRIL - MARCH).total_seconds() - 1
    names = list(orgs)
    records = []
    for i, (offset, ctx, gen) in enumerate(rows):
        name = names[i % len(names)]
        p = PROFILES[name]
        nth = i // len(names)
        failed = p.fail_every is not None and nth % p.fail_every == p.fail_every - 1
        ttft = p.ttft_base_ms + p.ttft_per_token_ms * ctx
        asked = nth % 7 == 3
        records.append(
            usage(
                orgs[name],
                at=MARCH + timedelta(seconds=offset / span * month),
                deployment=deployments[(i * 7 + ctx) % len(deployments)],
                input_tokens=ctx,
                output_tokens=gen // 2 if failed else gen,  # failed midway: what was streamed
                status="error" if failed else "ok",
                ttft_ms=ttft,
                constraints={"max_ttft_ms": p.asked_ttft_ms} if asked else {},
                sla_met=(ttft <= p.asked_ttft_ms and not failed) if asked else not failed,
            )
        )
    # Usage either side of the month belongs to other invoices.
    records.append(
        usage(orgs["globex"], at=MARCH - timedelta(seconds=1), deployment=deployments[0])
    )
    records.append(usage(orgs["globex"], at=APRIL, deployment=deployments[0]))
    for start in range(0, len(records), 500):
        record(*records[start : start + 500])
    return records


# --------------------------------------------------------------------------- independent


def cents(x: Fraction) -> Decimal:
    """Half-up to the cent, by integer arithmetic (x ≥ 0)."""
    hundredths = x * 100
    whole = hundredths.numerator // hundredths.denominator
    if hundredths - whole >= Fraction(1, 2):
        whole += 1
    return Decimal(whole) / 100


def per_million(rate: Fraction) -> Fraction:
    """A rate, half-up to 1e-6 (round() would round half to even)."""
    return Fraction(math.floor(rate * 10**6 + Fraction(1, 2)), 10**6)


MARGINS = {"free": 30, "pro": 20, "enterprise": 12}
OBJECTIVES = {  # latency %, default TTFT, availability %, credit %
    "free": (None, 2000, None, 0),
    "pro": (Fraction(99), 800, Fraction(995, 10), 10),
    "enterprise": (Fraction(995, 10), 500, Fraction(999, 10), 25),
}
BASE = {"free": Decimal("0"), "pro": Decimal("49"), "enterprise": Decimal("1500")}


def tier_of(name: str, at: datetime) -> str:
    return {"acme": "free", "globex": "pro", "hooli": "enterprise"}.get(name) or (
        "pro" if at < SWITCH else "enterprise"
    )


def expected_invoice(name: str, org, records) -> dict:
    lines: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, Fraction(0)])
    ok = failed = met = 0
    end_tier = tier_of(name, APRIL)
    latency_obj, default_ttft, availability_obj, credit_pct = OBJECTIVES[end_tier]
    costs = {d.slug: d for d in Deployment.objects.all()}
    for r in records:
        at = datetime.fromtimestamp(r.created_at, tz=UTC)
        if r.org_id != org.pk or not MARCH <= at < APRIL:
            continue
        if r.status == "error":
            failed += 1
        else:
            ok += 1
            deadline = "max_ttft_ms" in r.constraints
            met += bool(r.sla_met) if deadline else r.ttft_ms <= default_ttft
        d = costs[r.deployment]
        factor = Fraction(100 + MARGINS[tier_of(name, at)], 100)
        pin = per_million(Fraction(d.price_input_per_mtok) * factor)
        pout = per_million(Fraction(d.price_output_per_mtok) * factor)
        line = lines[(r.served_model, r.region, pin, pout)]
        line[0] += 1
        line[1] += r.input_tokens
        line[2] += r.output_tokens
        line[3] += (r.input_tokens * pin + r.output_tokens * pout) / 10**6
    usage_amounts = {key: cents(v[3]) for key, v in lines.items()}
    usage_total = sum(usage_amounts.values(), Decimal(0))
    credits = []
    if latency_obj is not None and Fraction(met * 100, ok) < latency_obj:
        credits.append("latency")
    if availability_obj is not None and Fraction(ok * 100, ok + failed) < availability_obj:
        credits.append("availability")
    credit_each = (usage_total * credit_pct / 100).quantize(Decimal("0.01"), ROUND_HALF_UP)
    credit_total = credit_each * len(credits)
    return {
        "lines": {key: (v[0], v[1], v[2], usage_amounts[key]) for key, v in lines.items()},
        "credits": credits,
        "subtotal": usage_total + BASE[end_tier],
        "credit_total": credit_total,
        "total": usage_total + BASE[end_tier] - credit_total,
    }


# --------------------------------------------------------------------------- the tests


@pytest.fixture
def closed_march(orgs, deployments):
    records = replay(orgs, deployments)
    with time_machine.travel(datetime(2026, 4, 1, 2, 0, tzinfo=UTC), tick=False):
        assert money_tasks.close_month() == 4  # the beat's task: the month before, all orgs
    return records


def test_a_month_of_trace_traffic_is_invoiced_to_the_cent_for_every_tier(orgs, closed_march):
    for name, org in orgs.items():
        want = expected_invoice(name, org, closed_march)
        invoice = Invoice.objects.for_org(org).get(period_start=MARCH)
        usage_lines = invoice.lines.filter(kind=InvoiceLine.Kind.USAGE)
        got = {
            (ln.model, ln.region, Fraction(ln.input_per_mtok_usd), Fraction(ln.output_per_mtok_usd)):  # noqa: E501
            (ln.requests, ln.input_tokens, ln.output_tokens, ln.amount_usd)
            for ln in usage_lines
        }  # fmt: skip
        assert got == want["lines"], name
        assert invoice.subtotal_usd == want["subtotal"], name
        assert invoice.credits_usd == want["credit_total"], name
        assert invoice.tax_usd == 0
        assert invoice.total_usd == want["total"], name
        # The stored charges and the line amounts are the same money.
        for ln in usage_lines:
            charges = UsageEvent.objects.for_org(org).filter(
                created_at__gte=MARCH, created_at__lt=APRIL, served_model=ln.model,
                region=ln.region, price_input_per_mtok_usd=ln.input_per_mtok_usd,
                price_output_per_mtok_usd=ln.output_per_mtok_usd,
            ).values_list("charge_usd", flat=True)  # fmt: skip
            assert ln.exact_usd == sum(charges, Decimal(0))
    # A mid-month tier change splits initech's lines at the new price.
    initech_lines = Invoice.objects.for_org(orgs["initech"]).get().lines.filter(kind="usage")
    assert len({(ln.model, ln.region) for ln in initech_lines}) < initech_lines.count()


def test_sla_credits_appear_exactly_where_an_objective_was_missed(orgs, closed_march):
    seen = {}
    for name, org in orgs.items():
        want = expected_invoice(name, org, closed_march)
        invoice = Invoice.objects.for_org(org).get(period_start=MARCH)
        credits = list(invoice.lines.filter(kind=InvoiceLine.Kind.SLA_CREDIT))
        assert [c.description.split()[2] for c in credits] == want["credits"], name
        for c in credits:
            assert c.measured_pct < c.promised_pct
            assert f"{c.measured_pct}% measured" in c.description
        seen[name] = want["credits"]
    # The scenario covers each case: none promised, each objective missed, all met.
    assert seen == {"acme": [], "globex": ["availability"], "initech": [], "hooli": ["latency"]}


def test_the_base_fee_is_the_tier_s_at_the_end_of_the_month(orgs, closed_march):
    fees = {
        name: [
            ln.amount_usd for ln in Invoice.objects.for_org(org).get().lines.filter(kind="base_fee")
        ]
        for name, org in orgs.items()
    }
    assert fees == {
        "acme": [],
        "globex": [Decimal("49.00")],
        "initech": [Decimal("1500.00")],
        "hooli": [Decimal("1500.00")],
    }


def test_closing_a_month_twice_changes_nothing(orgs, closed_march):
    before = list(Invoice.objects.values_list("pk", "number", "total_usd"))
    lines = InvoiceLine.objects.count()
    assert invoicing.invoices_close_month(year=2026, month=3) == []
    call_command("close_month", "2026-03")
    assert list(Invoice.objects.values_list("pk", "number", "total_usd")) == before
    assert InvoiceLine.objects.count() == lines


def test_a_request_the_backend_refused_as_malformed_is_not_our_failure(acme):
    # A client's own error (a 4xx from the backend: a prompt past the context, a bad
    # parameter) must not lower the availability it is credited for: else bad requests
    # would buy SLA credits.
    demo_world_load()
    deployment = Deployment.objects.select_related("model").order_by("slug").first()
    at = MARCH + timedelta(days=3)
    ok = [usage(acme, at=at, deployment=deployment) for _ in range(4)]
    refused = [
        usage(acme, at=at, deployment=deployment, status="rejected", input_tokens=0,
              output_tokens=0, ttft_ms=None, sla_met=None)
        for _ in range(6)
    ]  # fmt: skip
    failed = usage(acme, at=at, deployment=deployment, status="error", input_tokens=0,
                   output_tokens=0, ttft_ms=None, sla_met=None)  # fmt: skip
    record(*ok, *refused, failed)
    tier = invoicing.tier_at(acme, APRIL)
    measured = {a.objective: a for a in invoicing.attainment(acme, MARCH, APRIL, tier)}
    assert (measured["availability"].met, measured["availability"].eligible) == (4, 5)
    assert (measured["latency"].met, measured["latency"].eligible) == (4, 4)
    assert UsageEvent.objects.filter(status="rejected").count() == 6


def test_a_month_with_nothing_to_bill_gets_no_invoice(acme):
    invoice, created = invoicing.invoice_close_month(org=acme, year=2026, month=1)
    assert (invoice, created) == (None, False)


def test_the_command_refuses_a_malformed_month(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("close_month", "2026-13")


def test_the_period_is_the_utc_calendar_month():
    assert invoicing.period_bounds(2026, 12) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert invoicing.previous_month(datetime(2027, 1, 1, 2, tzinfo=UTC)) == (2026, 12)


# --------------------------------------------------------------------------- who sees it


@pytest.fixture
def acme_invoice(acme, deployments):
    subscriptions.tier_change(
        org=acme, tier=SlaTier.objects.get(slug="pro"), at=MARCH - timedelta(days=1)
    )
    record(usage(acme, at=MARCH + timedelta(days=2), deployment=deployments[0]))
    invoice, _ = invoicing.invoice_close_month(org=acme, year=2026, month=3)
    return invoice


def test_an_owner_sees_the_invoice_as_html_and_as_a_pdf(alice, acme, acme_invoice):
    client = login(alice)
    listing = client.get(f"/orgs/{acme.slug}/invoices/")
    assert acme_invoice.number in listing.content.decode()
    page = client.get(f"/orgs/{acme.slug}/invoices/{acme_invoice.number}/")
    assert page.status_code == 200
    assert "Pro tier" in page.content.decode()
    assert "$49.00" in page.content.decode()
    pdf = client.get(f"/orgs/{acme.slug}/invoices/{acme_invoice.number}/pdf")
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")


def test_the_invoice_pages_keep_the_organization_s_navigation_with_billing_current(
    alice, acme, acme_invoice
):
    client = login(alice)
    for path in ("invoices/", f"invoices/{acme_invoice.number}/"):
        page = client.get(f"/orgs/{acme.slug}/{path}").content.decode()
        assert f'<nav class="org-nav" aria-label="{acme.name}">' in page
        billing = f'href="/orgs/{acme.slug}/billing/" aria-current="page"'
        assert billing in page, path


def test_token_counts_on_an_invoice_are_grouped_by_thousands(alice, acme, acme_invoice):
    line = acme_invoice.lines.filter(kind="usage").first()
    line.input_tokens = 123_456_789
    line.save(update_fields=["input_tokens"])
    page = login(alice).get(f"/orgs/{acme.slug}/invoices/{acme_invoice.number}/")
    assert "123,456,789" in page.content.decode()


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DEVELOPER, Role.VIEWER])
def test_a_teammate_without_billing_rights_and_another_tenant_get_404(
    bob, charlie, acme, globex, acme_invoice, role
):
    Membership.objects.filter(org=acme, user=bob).update(role=role)
    for user in (bob, charlie):
        client = login(user)
        assert client.get(f"/orgs/{acme.slug}/invoices/").status_code == 404
        assert client.get(f"/orgs/{acme.slug}/invoices/{acme_invoice.number}/").status_code == 404
        assert (
            client.get(f"/orgs/{acme.slug}/invoices/{acme_invoice.number}/pdf").status_code == 404
        )
    # Charlie asking for Acme's invoice under his own org: no such invoice.
    assert (
        login(charlie).get(f"/orgs/{globex.slug}/invoices/{acme_invoice.number}/").status_code
        == 404
    )
