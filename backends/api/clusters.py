"""The management API for an organization's own private clusters (bring your own
deployment): `/api/v1/clusters…`, scoped to the caller's organization like the rest
of the management API (`billing.api.auth`). Members read; owners and `manage`-scope
keys (which only owners mint) write. Anything of
another organization, and any public cluster, is a 404 (`backends.selectors`).

It lives with the catalog, not in `billing.api`, because billing sits below the
catalog in the layers; the project's URLs mount it beside the rest of `/api/`.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from backends import selectors, services
from backends.models import AIModel, Certification, Chip, Cluster, Deployment, Provider, Region
from billing.api.auth import Caller, require
from billing.api.views import ManagementView

#: Writes are the owners' and their manage keys' (a private cluster changes where the
#: organization's data goes).
WRITE = "manage_clusters"


class DeploymentSerializer(serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="slug", queryset=AIModel.objects.all())
    provider_model_id = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="Your server's own name for the model, sent upstream (blank: the slug).",
    )

    class Meta:
        model = Deployment
        fields = [
            "slug", "model", "endpoint_url", *services.DEPLOYMENT_FIELDS, "loaded", "drained",
            "health",
        ]  # fmt: skip
        read_only_fields = ["slug", "loaded", "health"]
        extra_kwargs = {
            "endpoint_url": {"required": True, "allow_blank": False},
            "reference_prompt_tokens": {"required": False, "default": 1000},
            "drained": {"required": False},
        }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for name in ("ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s"):
            value = attrs.get(name)
            if value is not None and (value != value or value <= 0 or value == float("inf")):
                raise serializers.ValidationError({name: "Must be a positive, finite number."})
        if attrs.get("concurrency_slots") == 0:
            raise serializers.ValidationError({"concurrency_slots": "At least 1."})
        return attrs


#: How Tesseract authenticates to the cluster's endpoints (write-only credential).
AUTH_FIELDS = ("credential", "auth_style", "auth_header")


class ClusterSerializer(serializers.ModelSerializer):
    region = serializers.SlugRelatedField(slug_field="slug", queryset=Region.objects.all())
    chip = serializers.SlugRelatedField(slug_field="slug", queryset=Chip.objects.all())
    certifications = serializers.ListField(
        child=serializers.ChoiceField(choices=Certification.choices), required=False
    )
    deployments = DeploymentSerializer(many=True, read_only=True)
    credential = serializers.CharField(
        write_only=True,
        required=False,
        max_length=4000,
        help_text="The API key or token its endpoints expect; sealed, never shown again.",
    )
    auth_style = serializers.ChoiceField(
        choices=Provider.Auth.choices,
        required=False,
        help_text="bearer (Authorization: Bearer …), header (auth_header: …) or none.",
    )
    auth_header = serializers.CharField(required=False, max_length=80, allow_blank=True)
    credential_hint = serializers.SerializerMethodField()

    class Meta:
        model = Cluster
        fields = [
            "slug", "name", "region", "chip", "operator", "accelerators", "certifications",
            "drained", "deployments", *AUTH_FIELDS, "credential_hint",
        ]  # fmt: skip
        read_only_fields = ["slug"]
        extra_kwargs = {"operator": {"required": False}, "drained": {"required": False}}

    def get_credential_hint(self, cluster: Cluster) -> str:
        """`…abcd`: the last four characters of the credential, or empty."""
        return cluster.provider.credential_hint if cluster.provider else ""

    def to_representation(self, cluster: Cluster) -> dict[str, Any]:
        data = super().to_representation(cluster)
        provider = cluster.provider
        data["auth_style"] = provider.auth_style if provider else Provider.Auth.NONE
        data["auth_header"] = provider.auth_header if provider else ""
        return data


def _caller(request: Request, permission: str) -> Caller:
    return require(request, permission)


def _invalid(exc: services.PrivateClusterError) -> exceptions.ValidationError:
    return exceptions.ValidationError(str(exc))


class ClusterListView(ManagementView):
    @extend_schema(
        responses=ClusterSerializer(many=True), summary="Your organization's private clusters"
    )
    def get(self, request: Request) -> Response:
        org = _caller(request, "view").org
        clusters = selectors.private_cluster_list(org=org)
        return Response(ClusterSerializer(clusters, many=True).data)

    @extend_schema(
        request=ClusterSerializer,
        responses={201: ClusterSerializer},
        summary="Register a private cluster (owners)",
    )
    def post(self, request: Request) -> Response:
        org = _caller(request, WRITE).org
        body = ClusterSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        data.pop("drained", None)
        auth = {k: data.pop(k) for k in AUTH_FIELDS if k in data}
        try:
            with transaction.atomic():
                cluster = services.private_cluster_create(org=org, **data)
                if auth:
                    services.private_cluster_auth_set(cluster, **auth)
        except services.PrivateClusterError as exc:
            raise _invalid(exc) from exc
        cluster = selectors.access_private_cluster(org=org, slug=cluster.slug)
        return Response(ClusterSerializer(cluster).data, status=201)


class ClusterDetailView(ManagementView):
    @extend_schema(responses=ClusterSerializer, summary="One of your private clusters")
    def get(self, request: Request, slug: str) -> Response:
        org = _caller(request, "view").org
        return Response(
            ClusterSerializer(selectors.access_private_cluster(org=org, slug=slug)).data
        )

    @extend_schema(
        request=ClusterSerializer,
        responses=ClusterSerializer,
        summary="Change a private cluster (owners)",
    )
    def patch(self, request: Request, slug: str) -> Response:
        org = _caller(request, WRITE).org
        cluster = selectors.access_private_cluster(org=org, slug=slug)
        body = ClusterSerializer(cluster, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        auth = {k: data.pop(k) for k in AUTH_FIELDS if k in data}
        try:
            with transaction.atomic():
                services.private_cluster_update(cluster, **data)
                if auth:
                    services.private_cluster_auth_set(cluster, **auth)
        except services.PrivateClusterError as exc:
            raise _invalid(exc) from exc
        cluster = selectors.access_private_cluster(org=org, slug=slug)
        return Response(ClusterSerializer(cluster).data)

    @extend_schema(request=None, responses={204: None}, summary="Remove a private cluster (owners)")
    def delete(self, request: Request, slug: str) -> Response:
        org = _caller(request, WRITE).org
        services.private_cluster_delete(selectors.access_private_cluster(org=org, slug=slug))
        return Response(status=204)


class DeploymentListView(ManagementView):
    @extend_schema(
        responses=DeploymentSerializer(many=True), summary="The models a private cluster serves"
    )
    def get(self, request: Request, slug: str) -> Response:
        org = _caller(request, "view").org
        cluster = selectors.access_private_cluster(org=org, slug=slug)
        return Response(DeploymentSerializer(cluster.deployments.all(), many=True).data)

    @extend_schema(
        request=DeploymentSerializer,
        responses={201: DeploymentSerializer},
        summary="Serve a model on a private cluster (owners)",
    )
    def post(self, request: Request, slug: str) -> Response:
        org = _caller(request, WRITE).org
        cluster = selectors.access_private_cluster(org=org, slug=slug)
        body = DeploymentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        data.pop("drained", None)
        try:
            deployment = services.private_deployment_create(cluster=cluster, **data)
        except services.PrivateClusterError as exc:
            raise _invalid(exc) from exc
        return Response(DeploymentSerializer(deployment).data, status=201)


class DeploymentDetailView(ManagementView):
    def _get(self, request: Request, slug: str, deployment: str, permission: str) -> Deployment:
        org = _caller(request, permission).org
        return selectors.access_private_deployment(org=org, cluster_slug=slug, slug=deployment)

    @extend_schema(responses=DeploymentSerializer, summary="One model of a private cluster")
    def get(self, request: Request, slug: str, deployment: str) -> Response:
        return Response(DeploymentSerializer(self._get(request, slug, deployment, "view")).data)

    @extend_schema(
        request=DeploymentSerializer,
        responses=DeploymentSerializer,
        summary="Change a private deployment (owners)",
    )
    def patch(self, request: Request, slug: str, deployment: str) -> Response:
        row = self._get(request, slug, deployment, WRITE)
        body = DeploymentSerializer(row, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        changes = dict(body.validated_data)
        if "model" in changes and changes.pop("model") != row.model:
            raise exceptions.ValidationError({"model": "Add a deployment for another model."})
        try:
            services.private_deployment_update(row, **changes)
        except services.PrivateClusterError as exc:
            raise _invalid(exc) from exc
        return Response(DeploymentSerializer(row).data)

    @extend_schema(request=None, responses={204: None}, summary="Stop serving a model (owners)")
    def delete(self, request: Request, slug: str, deployment: str) -> Response:
        services.private_deployment_delete(self._get(request, slug, deployment, WRITE))
        return Response(status=204)


app_name = "clusters"

urlpatterns = [
    path("v1/clusters", ClusterListView.as_view(), name="list"),
    path("v1/clusters/<str:slug>", ClusterDetailView.as_view(), name="detail"),
    path("v1/clusters/<str:slug>/deployments", DeploymentListView.as_view(), name="deployments"),
    path(
        "v1/clusters/<str:slug>/deployments/<str:deployment>",
        DeploymentDetailView.as_view(),
        name="deployment",
    ),
]
