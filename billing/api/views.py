"""The management API: one view per operation, scoped to the caller's organization."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, pagination, permissions
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import GRANT_MANAGE_SCOPE, ApiKey, Scope
from accounts.params import whole_number
from billing import pdf, selectors, subscriptions
from billing.api import serializers as s
from billing.api.auth import ManageKeyAuthentication, require
from billing.models import UsageEvent

MAX_DAILY_SPAN_DAYS = 366


class ManagementView(APIView):
    authentication_classes = [ManageKeyAuthentication, SessionAuthentication]
    permission_classes = [permissions.IsAuthenticated]


class UsageCursor(pagination.CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000

    def get_page_size(self, request: Request) -> int:
        """`limit` if given, 1 to 1000; anything else is a 400 (DRF's default: ignore it)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = whole_number(raw, self.max_page_size)
        if size is None:
            message = f"Expected a whole number from 1 to {self.max_page_size}."
            raise exceptions.ValidationError({self.page_size_query_param: message})
        return size

    def decode_cursor(self, request: Request) -> pagination.Cursor | None:
        """A cursor this API did not give is a bad request (DRF's default: a 404; and
        a well-formed one holding no time reached the database)."""
        try:
            cursor = super().decode_cursor(request)
            position = cursor.position if cursor is not None else None
            if position is not None and parse_datetime(str(position)) is None:
                raise ValueError(position)
        except (exceptions.NotFound, ValueError):
            raise exceptions.ValidationError(
                {self.cursor_query_param: "Not a cursor this API gave (use a page's next)."}
            ) from None
        return cursor


# --------------------------------------------------------------------------- organization


class OrgView(ManagementView):
    @extend_schema(
        responses=s.AccountSerializer, summary="The organization's tier, limits and budget"
    )
    def get(self, request: Request) -> Response:
        org = require(request, "view").org
        return Response(s.AccountSerializer(selectors.billing_account(org=org)).data)


class BudgetView(ManagementView):
    @extend_schema(
        request=s.BudgetSerializer,
        responses=s.AccountSerializer,
        summary="Set the monthly budget (owners)",
    )
    def put(self, request: Request) -> Response:
        org = require(request, "manage_billing").org
        body = s.BudgetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        subscriptions.budget_set(
            org=org, monthly_budget_usd=body.validated_data["monthly_budget_usd"]
        )
        return Response(s.AccountSerializer(selectors.billing_account(org=org)).data)


# --------------------------------------------------------------------------- keys


class KeyListView(ManagementView):
    @extend_schema(responses=s.KeySerializer(many=True), summary="The organization's API keys")
    def get(self, request: Request) -> Response:
        org = require(request, "view").org
        keys = ApiKey.objects.for_org(org).select_related("limits").order_by("-created_at")
        return Response(s.KeySerializer(keys, many=True).data)

    @extend_schema(
        request=s.KeyCreateSerializer,
        responses={201: s.KeySerializer},
        summary="Create a key; its secret is in this answer only",
    )
    def post(self, request: Request) -> Response:
        c = require(request, "manage_keys")
        body = s.KeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        scopes = body.validated_data.get("scopes")
        if scopes and Scope.MANAGE in scopes and not c.can(GRANT_MANAGE_SCOPE):
            raise exceptions.PermissionDenied("Only owners may create keys with the manage scope.")
        try:
            issued = account_services.api_key_create(
                org=c.org,
                name=body.validated_data["name"],
                created_by=c.user,
                scopes=scopes,
                expires_at=body.validated_data.get("expires_at"),
            )
        except account_services.AccountsError as exc:
            raise exceptions.ValidationError(
                {exc.field: str(exc)} if exc.field else str(exc)
            ) from exc
        data = dict(s.KeySerializer(issued.api_key).data)
        data["secret"] = issued.plaintext  # shown once
        return Response(data, status=201)


def _key(request: Request, key_id: int, permission: str) -> ApiKey:
    c = require(request, permission)
    return account_selectors.access_api_key(org=c.org, key_id=key_id)


class KeyRevokeView(ManagementView):
    @extend_schema(request=None, responses=s.KeySerializer, summary="Revoke a key now")
    def post(self, request: Request, key_id: int) -> Response:
        key = account_services.api_key_revoke(api_key=_key(request, key_id, "manage_keys"))
        return Response(s.KeySerializer(key).data)


class KeyLimitsView(ManagementView):
    @extend_schema(
        request=s.KeyLimitsSerializer,
        responses=s.KeySerializer,
        summary="Set a key's own limits and budget",
    )
    def put(self, request: Request, key_id: int) -> Response:
        key = _key(request, key_id, "manage_keys")
        body = s.KeyLimitsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        subscriptions.key_limits_set(api_key=key, **body.validated_data)
        key = ApiKey.objects.select_related("limits").get(pk=key.pk)
        return Response(s.KeySerializer(key).data)


# --------------------------------------------------------------------------- usage

USAGE_FILTERS = [
    OpenApiParameter("start", str, description="From (ISO date or datetime, UTC), inclusive"),
    OpenApiParameter("end", str, description="To (ISO date or datetime, UTC), exclusive"),
    OpenApiParameter("model", str),
    OpenApiParameter("region", str),
    OpenApiParameter("key", int, description="An API key's id"),
]


def _moment(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:  # None: not the format; ValueError: the format, but no such day or time
        moment = parse_datetime(value)
        day = parse_date(value) if moment is None else None
    except ValueError as exc:
        raise exceptions.ValidationError({name: f"{value!r} is not a valid date: {exc}."}) from None
    if moment is None:
        if day is None:
            raise exceptions.ValidationError({name: "Expected an ISO date or datetime."})
        moment = datetime.combine(day, time.min)
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return moment


def _usage(request: Request) -> QuerySet[Any]:
    org = require(request, "view").org
    q = request.query_params
    rows = UsageEvent.objects.for_org(org)
    start, end = _moment(q.get("start"), "start"), _moment(q.get("end"), "end")
    if start:
        rows = rows.filter(created_at__gte=start)
    if end:
        rows = rows.filter(created_at__lt=end)
    if q.get("model"):
        rows = rows.filter(served_model=q["model"])
    if q.get("region"):
        rows = rows.filter(region=q["region"])
    if q.get("key"):
        key_id = whole_number(q["key"])
        if key_id is None:
            raise exceptions.ValidationError({"key": "Expected a key id."})
        rows = rows.filter(api_key_id=key_id)
    return rows


class UsageListView(ManagementView):
    @extend_schema(
        parameters=USAGE_FILTERS,
        responses=s.UsageSerializer(many=True),
        summary="Requests, newest first (cursor pagination)",
    )
    def get(self, request: Request) -> Response:
        paginator = UsageCursor()
        page = paginator.paginate_queryset(_usage(request), request, view=self)
        return paginator.get_paginated_response(s.UsageSerializer(page, many=True).data)


class UsageDailyView(ManagementView):
    @extend_schema(
        parameters=USAGE_FILTERS,
        responses=s.DailyUsageSerializer(many=True),
        summary="Usage aggregated by day (UTC)",
    )
    def get(self, request: Request) -> Response:
        rows = _usage(request)
        if not request.query_params.get("start"):
            since = timezone.now() - timedelta(days=31)
            rows = rows.filter(created_at__gte=since)
        days = (
            rows.annotate(day=TruncDate("created_at"))
            .values("day")
            .annotate(
                requests=Count("pk"),
                input_tokens=Sum("input_tokens"),
                output_tokens=Sum("output_tokens"),
                charge_usd=Sum("charge_usd"),
            )
            .order_by("day")[:MAX_DAILY_SPAN_DAYS]
        )
        return Response(s.DailyUsageSerializer(days, many=True).data)


# --------------------------------------------------------------------------- invoices


class InvoiceListView(ManagementView):
    @extend_schema(responses=s.InvoiceSerializer(many=True), summary="The organization's invoices")
    def get(self, request: Request) -> Response:
        org = require(request, "view_billing").org
        return Response(s.InvoiceSerializer(selectors.invoice_list(org=org), many=True).data)


class InvoiceDetailView(ManagementView):
    @extend_schema(responses=s.InvoiceDetailSerializer, summary="One invoice with its lines")
    def get(self, request: Request, number: str) -> Response:
        org = require(request, "view_billing").org
        return Response(
            s.InvoiceDetailSerializer(selectors.access_invoice(org=org, number=number)).data
        )


class InvoicePdfView(ManagementView):
    @extend_schema(responses={(200, "application/pdf"): bytes}, summary="One invoice as a PDF")
    def get(self, request: Request, number: str) -> HttpResponse:
        org = require(request, "view_billing").org
        invoice = selectors.access_invoice(org=org, number=number)
        response = HttpResponse(
            pdf.invoice_pdf(invoice, selectors.invoice_lines(invoice=invoice)),
            content_type="application/pdf",
        )
        response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
        return response
