"""The operator part of the management API: providers and presets (staff with 2FA)."""

from __future__ import annotations

from django.db import transaction
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backends import providers
from backends.api.serializers import PresetSerializer, ProviderSerializer
from backends.models import Provider
from backends.presets import PRESETS


class IsVerifiedStaff(permissions.BasePermission):
    """Tesseract staff who passed their second factor (as the admin requires)."""

    message = "The operator API is for Tesseract staff signed in with a second factor."

    def has_permission(self, request: Request, view: object) -> bool:
        user = request.user
        verified = getattr(user, "is_verified", lambda: False)
        return bool(user and user.is_authenticated and user.is_staff and verified())


class OperatorView(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsVerifiedStaff]


def _save(serializer: ProviderSerializer, by: str) -> Provider:
    credential = serializer.validated_data.pop("credential", None)
    with transaction.atomic():
        provider = serializer.save()
        if credential:
            providers.credential_set(provider, credential, by=by)
    return provider


class ProviderListView(OperatorView):
    @extend_schema(responses=ProviderSerializer(many=True), summary="Every provider")
    def get(self, request: Request) -> Response:
        rows = Provider.objects.prefetch_related("deployments").order_by("slug")
        return Response(ProviderSerializer(rows, many=True).data)

    @extend_schema(
        request=ProviderSerializer,
        responses={201: ProviderSerializer},
        summary="Add a provider (choose a preset, paste a key)",
    )
    def post(self, request: Request) -> Response:
        serializer = ProviderSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        provider = _save(serializer, by=str(request.user))
        return Response(ProviderSerializer(provider).data, status=status.HTTP_201_CREATED)


class ProviderDetailView(OperatorView):
    def _get(self, slug: str) -> Provider:
        provider = Provider.objects.filter(slug=slug).first()
        if provider is None:
            raise Http404(f"No provider {slug!r}.")
        return provider

    @extend_schema(responses=ProviderSerializer, summary="One provider")
    def get(self, request: Request, slug: str) -> Response:
        return Response(ProviderSerializer(self._get(slug)).data)

    @extend_schema(
        request=ProviderSerializer,
        responses=ProviderSerializer,
        summary="Change a provider (a new credential puts a misconfigured one back)",
    )
    def patch(self, request: Request, slug: str) -> Response:
        serializer = ProviderSerializer(self._get(slug), data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        provider = _save(serializer, by=str(request.user))
        provider.refresh_from_db()
        return Response(ProviderSerializer(provider).data)


class PresetListView(OperatorView):
    @extend_schema(responses=PresetSerializer(many=True), summary="Provider presets")
    def get(self, request: Request) -> Response:
        return Response(PresetSerializer(list(PRESETS.values()), many=True).data)
