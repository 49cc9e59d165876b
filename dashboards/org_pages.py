"""The developer dashboard: one organization's requests, money, keys and routes.

Every view here is an `@org_view` (`dashboards.scoping`): it receives the caller's
membership, and reads through `membership.org` only.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import GRANT_MANAGE_SCOPE, Membership
from backends.models import Region
from billing import pdf, stripe_client, subscriptions
from billing import selectors as billing_selectors
from billing.models import ApiKeyLimits, SlaTier
from dashboards import charts, explain, usage
from dashboards.forms import (
    ApiKeyCreateForm,
    ApiKeyLimitsForm,
    BudgetForm,
    ExplainForm,
    LogFilterForm,
    TierForm,
)
from dashboards.scoping import nav_context, org_view
from dashboards.templatetags.money import usd

PERIODS = (("7", "7 days"), ("30", "30 days"), ("90", "90 days"))


def _page(
    request: HttpRequest,
    membership: Membership,
    active: str,
    template: str,
    context: dict[str, Any],
    status: int = 200,
) -> HttpResponse:
    return render(
        request,
        f"dashboards/org/{template}",
        {**nav_context(membership, active), **context},
        status=status,
    )


def _period(request: HttpRequest) -> tuple[usage.Period, str]:
    chosen = request.GET.get("period", "30")
    if chosen not in dict(PERIODS):
        chosen = "30"
    return usage.Period.parse(chosen), chosen


# -------------------------------------------------------------------------- overview


@org_view()
def overview(request: HttpRequest, membership: Membership) -> HttpResponse:
    org = membership.org
    period, chosen = _period(request)
    account = billing_selectors.billing_account(org=org)
    tier = account.tier
    rows = usage.rows(org, period)
    days = usage.daily(rows, period)
    whole = usage.totals(rows)
    month = usage.month_to_date(org)
    cap = account.monthly_cap_usd
    objective = tier.latency_objective_pct
    attainment = whole.attainment

    def spark(attribute: str, label: str) -> Any:
        return charts.sparkline(usage.series(days, attribute), label=f"{label}, daily")

    tiles = [
        {
            "label": "Requests",
            "value": f"{whole.requests:,}",
            "note": f"last {period.length} days",
            "spark": spark("requests", "Requests"),
        },
        {
            "label": "Tokens",
            "value": f"{whole.tokens:,}",
            "note": "input + output",
            "spark": spark("tokens", "Tokens"),
        },
        {
            "label": "Spend this month",
            "value": usd(month.spend),
            "note": f"of {usd(cap)} budget" if cap is not None else "no budget set",
            "meter": (float(month.spend / cap) if cap else None),
            "spark": spark("spend", "Spend"),
        },
        {
            "label": "SLA attainment",
            "value": "—" if attainment is None else f"{attainment:.2%}",
            "note": f"objective {objective}%" if objective is not None else "no objective",
            "bad": (
                attainment is not None
                and objective is not None
                and Decimal(attainment * 100) < objective
            ),
            "spark": spark("attainment", "SLA attainment"),
        },
        {
            "label": "TTFT p50 / p99",
            "value": (
                "—"
                if whole.p50 is None or whole.p99 is None
                else f"{whole.p50:.0f} / {whole.p99:.0f} ms"
            ),
            "note": f"default deadline {tier.default_ttft_ms} ms",
            "spark": spark("p99", "TTFT p99"),
        },
        {
            "label": "Error rate",
            "value": "—" if whole.error_rate is None else f"{whole.error_rate:.2%}",
            "note": f"{whole.errors:,} failed",
            "bad": bool(whole.error_rate and whole.error_rate > 0.01),
            "spark": spark("error_rate", "Error rate"),
        },
    ]
    return _page(
        request,
        membership,
        "overview",
        "overview.html",
        {"tiles": tiles, "tier": tier, "periods": PERIODS, "chosen": chosen},
    )


# ----------------------------------------------------------------------------- usage


@org_view()
def usage_page(request: HttpRequest, membership: Membership) -> HttpResponse:
    org = membership.org
    period, chosen = _period(request)
    dimension = request.GET.get("by", "model")
    if dimension not in ("model", "region", "key"):
        dimension = "model"
    tier = billing_selectors.billing_account(org=org).tier
    rows = usage.rows(org, period)
    days = usage.daily(rows, period)
    labels = [d.strftime("%b %d") for d in period.days]
    split = usage.by_dimension(org, rows, period, dimension)

    def chart(measure: str, title: str, unit: str = "") -> Any:
        table: dict[str, list[Any]] = getattr(split, measure)
        return charts.line_chart(
            labels,
            [charts.Series(n, [float(v) for v in table[n]]) for n in split.names],
            title=title,
            unit=unit,
        )

    latency = charts.line_chart(
        labels,
        [
            charts.Series("p50 TTFT", usage.series(days, "p50")),
            charts.Series("p99 TTFT", usage.series(days, "p99")),
        ],
        title="Time to first token, daily percentiles (ms)",
        unit=" ms",
        objective=float(tier.default_ttft_ms),
        objective_label="default deadline",
    )
    attainment = charts.line_chart(
        labels,
        [
            charts.Series(
                "SLA met (%)",
                [None if v is None else v * 100 for v in usage.series(days, "attainment")],
            )
        ],
        title="SLA attainment, daily (%)",
        unit="%",
        objective=(
            float(tier.latency_objective_pct) if tier.latency_objective_pct is not None else None
        ),
        objective_label=f"{tier.name} objective",
    )
    table = [
        {"name": n, "requests": r, "tokens": t, "spend": s} for n, (r, t, s) in split.totals.items()
    ]
    return _page(
        request,
        membership,
        "usage",
        "usage.html",
        {
            "periods": PERIODS,
            "chosen": chosen,
            "dimension": dimension,
            "dimensions": (("model", "Model"), ("region", "Region"), ("key", "API key")),
            "requests_chart": chart("requests", f"Requests per day by {dimension}"),
            "spend_chart": chart("spend", f"Spend per day by {dimension} (USD)", ""),
            "tokens_chart": chart("tokens", f"Tokens per day by {dimension}"),
            "latency_chart": latency,
            "attainment_chart": attainment,
            "rows": table,
            "tier": tier,
        },
    )


# ------------------------------------------------------------------------------- map


@org_view()
def world_map(request: HttpRequest, membership: Membership) -> HttpResponse:
    org = membership.org
    period, chosen = _period(request)
    volumes = usage.by_region(usage.rows(org, period))
    regions = {
        r.slug: r
        for r in Region.objects.filter(slug__in=[v.region for v in volumes]).only(
            "slug", "name", "latitude", "longitude", "country", "physical_location"
        )
    }
    points, rows = [], []
    for v in volumes:
        region = regions.get(v.region)
        rows.append({"volume": v, "region": region})
        if region is not None:
            points.append(
                charts.MapPoint(
                    label=f"{region.name} ({region.slug})",
                    latitude=region.latitude,
                    longitude=region.longitude,
                    volume=v.requests,
                    sla_met_share=v.attainment,
                )
            )
    drawing = charts.world_map(
        points,
        land_href=static("img/world-land-110m.svg"),
        title=f"Where {org.name}'s requests ran, last {period.length} days",
    )
    return _page(
        request,
        membership,
        "map",
        "map.html",
        {"map": drawing, "rows": rows, "periods": PERIODS, "chosen": chosen},
    )


# ----------------------------------------------------------------------- request log


@org_view()
def request_log(request: HttpRequest, membership: Membership) -> HttpResponse:
    org = membership.org
    keys = account_selectors.api_key_list(org=org)
    form = LogFilterForm(request.GET or None, keys=keys)
    filters = usage.LogFilters()
    status = 200
    if form.is_bound:
        if form.is_valid():
            filters = form.filters()
        else:
            status = 400
    page = usage.request_log(org, filters, request.GET.get("cursor") or None)
    query = request.GET.copy()
    query.pop("cursor", None)
    return _page(
        request,
        membership,
        "requests",
        "requests.html",
        {
            "form": form,
            "page": page,
            "query": query.urlencode(),
            "choices": usage.filter_choices(usage.rows(org, usage.Period.last_days(90))),
        },
        status=status,
    )


def _proof_url(org_slug: str, request_id: str) -> str | None:
    """The proof-of-residency download, once the audit log exists (`audit:request_proof`)."""
    try:
        return reverse(
            "audit:request_proof", kwargs={"org_slug": org_slug, "request_id": request_id}
        )
    except NoReverseMatch:
        return None


@org_view()
def request_detail(request: HttpRequest, membership: Membership, request_id: str) -> HttpResponse:
    org = membership.org
    event = usage.access_event(org, request_id)
    breakdown = charts.breakdown_bar(
        [
            ("network", event.network_ms),
            ("queue", event.queue_ms),
            ("compute", event.compute_ms),
        ]
    )
    why = explain.why_it_won(event)
    region = Region.objects.filter(slug=event.region).first() if event.region else None
    return _page(
        request,
        membership,
        "requests",
        "request_detail.html",
        {
            "event": event,
            "breakdown": breakdown,
            "why": why,
            "region": region,
            "constraints": sorted(event.constraints.items()),
            "proof_url": _proof_url(org.slug, event.request_id),
        },
    )


# ---------------------------------------------------------------------- route explainer


@org_view()
def route_explainer(request: HttpRequest, membership: Membership) -> HttpResponse:
    form = ExplainForm(request.GET or None)
    result = None
    status = 200
    if form.is_bound:
        if form.is_valid():
            try:
                result = explain.dry_run(form.route_body())
            except explain.ExplainError as exc:
                form.add_error(None, str(exc))
                status = 400
        else:
            status = 400
    return _page(
        request,
        membership,
        "explain",
        "explain.html",
        {"form": form, "result": result},
        status=status,
    )


# ------------------------------------------------------------------------------ keys


def _keys_page(
    request: HttpRequest, membership: Membership, form: ApiKeyCreateForm, status: int = 200
) -> HttpResponse:
    org = membership.org
    keys = account_selectors.api_key_list(org=org)
    limits = {row.api_key_id: row for row in ApiKeyLimits.objects.for_org(org)}
    for key in keys:
        key.own_limits = limits.get(key.pk)  # type: ignore[attr-defined]
    return _page(
        request, membership, "keys", "keys.html", {"keys": keys, "form": form}, status=status
    )


def _key_form(membership: Membership, data: Any = None) -> ApiKeyCreateForm:
    return ApiKeyCreateForm(data, can_grant_manage=membership.can(GRANT_MANAGE_SCOPE))


@org_view()
def keys(request: HttpRequest, membership: Membership) -> HttpResponse:
    """GET: the org's keys. POST: create one (manage_keys), revealed once."""
    if request.method != "POST":
        return _keys_page(request, membership, _key_form(membership))
    if not membership.can("manage_keys"):
        raise Http404("No such organization.")
    form = _key_form(membership, request.POST)
    if not form.is_valid():
        return _keys_page(request, membership, form, status=400)
    data = dict(form.cleaned_data)
    limits = {
        k: data.pop(k) for k in ("requests_per_minute", "tokens_per_minute", "monthly_budget_usd")
    }
    try:
        issued = account_services.api_key_create(
            org=membership.org, created_by=membership.user, **data
        )
    except account_services.AccountsError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        return _keys_page(request, membership, form, status=400)
    if any(v is not None for v in limits.values()):
        subscriptions.key_limits_set(api_key=issued.api_key, **limits)
    response = render(
        request,
        "dashboards/key_created.html",
        {**nav_context(membership, "keys"), "issued": issued, "base_url": _base_url(request)},
    )
    response["Cache-Control"] = "no-store"
    return response


@org_view("manage_keys")
def key_limits(request: HttpRequest, membership: Membership, key_id: int) -> HttpResponse:
    key = account_selectors.access_api_key(org=membership.org, key_id=key_id)
    current = ApiKeyLimits.objects.for_org(membership.org).filter(api_key=key).first()
    if request.method == "POST":
        form = ApiKeyLimitsForm(request.POST)
        if form.is_valid():
            subscriptions.key_limits_set(api_key=key, **form.cleaned_data)
            from billing.limits import keys_changed

            keys_changed(org_id=membership.org.pk)
            messages.success(request, f"Limits of {key.display_prefix} saved.")
            return redirect("dashboards:keys", org_slug=membership.org.slug)
        status = 400
    else:
        initial = {}
        if current is not None:
            initial = {
                "requests_per_minute": current.requests_per_minute,
                "tokens_per_minute": current.tokens_per_minute,
                "monthly_budget_usd": current.monthly_budget_usd,
            }
        form, status = ApiKeyLimitsForm(initial=initial), 200
    account = billing_selectors.billing_account(org=membership.org)
    context = {"key": key, "form": form, "account": account}
    return _page(request, membership, "keys", "key_limits.html", context, status=status)


# --------------------------------------------------------------------------- billing


@org_view("manage_billing")
def billing(request: HttpRequest, membership: Membership) -> HttpResponse:
    org = membership.org
    account = billing_selectors.billing_account(org=org)
    tier_form = TierForm(initial={"tier": account.tier_id})
    budget_form = BudgetForm(initial={"monthly_budget_usd": account.monthly_budget_usd})
    status = 200
    if request.method == "POST":
        if "tier" in request.POST:
            tier_form = TierForm(request.POST)
            if tier_form.is_valid():
                tier: SlaTier = tier_form.cleaned_data["tier"]
                subscriptions.tier_change(org=org, tier=tier, changed_by=membership.user)
                from billing.limits import keys_changed

                keys_changed(org_id=org.pk)
                messages.success(request, f"{org.name} is now on {tier.name}.")
                return redirect("dashboards:billing", org_slug=org.slug)
        else:
            budget_form = BudgetForm(request.POST)
            if budget_form.is_valid():
                subscriptions.budget_set(
                    org=org, monthly_budget_usd=budget_form.cleaned_data["monthly_budget_usd"]
                )
                messages.success(request, "Budget saved.")
                return redirect("dashboards:billing", org_slug=org.slug)
        status = 400
    month = usage.month_to_date(org)
    cap = account.monthly_cap_usd
    return _page(
        request,
        membership,
        "billing",
        "billing.html",
        {
            "account": account,
            "tier": account.tier,
            "month": month,
            "projected": usage.projected_month(month.spend),
            "cap": cap,
            "used_share": float(month.spend / cap) if cap else None,
            "invoices": billing_selectors.invoice_list(org=org),
            "tier_form": tier_form,
            "budget_form": budget_form,
            "stripe_enabled": stripe_client.enabled(),
        },
        status=status,
    )


@org_view("manage_billing")
def invoice_list(request: HttpRequest, membership: Membership) -> HttpResponse:
    org = membership.org
    context = {
        "account": billing_selectors.billing_account(org=org),
        "invoices": billing_selectors.invoice_list(org=org),
        "stripe_enabled": stripe_client.enabled(),
    }
    return _page(request, membership, "billing", "invoice_list.html", context)


@org_view("manage_billing")
def invoice_detail(request: HttpRequest, membership: Membership, number: str) -> HttpResponse:
    invoice = billing_selectors.access_invoice(org=membership.org, number=number)
    context = {"invoice": invoice, "lines": billing_selectors.invoice_lines(invoice=invoice)}
    return _page(request, membership, "billing", "invoice_detail.html", context)


@org_view("manage_billing")
def invoice_pdf(request: HttpRequest, membership: Membership, number: str) -> HttpResponse:
    invoice = billing_selectors.access_invoice(org=membership.org, number=number)
    body = pdf.invoice_pdf(invoice, billing_selectors.invoice_lines(invoice=invoice))
    response = HttpResponse(body, content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
    return response


# ------------------------------------------------------------------------ quick start


def _base_url(request: HttpRequest) -> str:
    """The inference API's base URL as this org's developers reach it: the gateway's
    (`TESSERACT_GATEWAY_URL`; `make run` sets it), else this host's, for a deployment
    that serves both behind one name."""
    configured = settings.TESSERACT_GATEWAY_URL
    if configured:
        return configured.rstrip("/") + "/v1"
    return request.build_absolute_uri("/v1").rstrip("/")


@org_view()
def quickstart(request: HttpRequest, membership: Membership) -> HttpResponse:
    keys = [k for k in account_selectors.api_key_list(org=membership.org) if k.is_active]
    key = keys[0] if keys else None
    tesseract = {
        "max_ttft_ms": 200,
        "jurisdictions": ["EU"],
        "compliance": ["gdpr"],
    }
    if key is not None and key.default_compliance:
        tesseract["compliance"] = list(key.default_compliance)
    return _page(
        request,
        membership,
        "quickstart",
        "quickstart.html",
        {
            "base_url": _base_url(request),
            "key_hint": f"{key.display_prefix}…" if key else "tsk_…",
            "model": "llama-3.3-70b-instruct",
            "tesseract_body": json.dumps(tesseract),
            "tesseract_py": json.dumps({"tesseract": tesseract}),
        },
    )
