"""The catalog of where inference can run: sites, clusters, chips, models, deployments.

A Deployment (cluster × chip × model) is what the router routes to. Compliance and
residency are properties of the Region (the site); performance is a property of the
Deployment. All of it is edited by operators in the admin; `load_demo_world` fills
it from the real data in `backends/data/`.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from accounts.types import Tenant
from backends import planner
from backends.world import jurisdictions


class Owner(models.TextChoices):
    TESSERACT = "tesseract", "Tesseract-owned"
    PARTNER = "partner", "Partner"
    CUSTOMER = "customer", "A customer's own (private cluster)"


class Health(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    DOWN = "down", "Down"


class Certification(models.TextChoices):
    HIPAA = "hipaa", "HIPAA (BAA signed)"
    GDPR = "gdpr", "GDPR"
    SOC2 = "soc2", "SOC 2"
    ISO27001 = "iso27001", "ISO 27001"


def unknown_certifications(tags: Iterable[str]) -> list[str]:
    """The tags among `tags` that are not `Certification`'s, sorted: what a cluster,
    a key's defaults and a request may name is held to one list."""
    return sorted(set(tags) - set(Certification.values))


class Region(models.Model):
    """A site where clusters stand, with the legal and physical facts routing needs.

    `certifications` are what the place itself gives (tags from `Certification`, such
    as GDPR in the EEA); what an operator holds (a HIPAA BAA) is on its `Cluster`;
    EU/EEA membership comes from the country; `sovereign` marks sites run under a
    sovereign-cloud arrangement.
    """

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80, unique=True)
    provider = models.CharField(max_length=40, default="azure")
    physical_location = models.CharField(max_length=120, blank=True)
    country_code = models.CharField(max_length=2)
    country = models.CharField(max_length=80)
    geo_group = models.CharField(max_length=40, blank=True)
    latitude = models.FloatField(validators=[MinValueValidator(-90.0)])
    longitude = models.FloatField()
    eu_member = models.BooleanField(default=False)
    eea_member = models.BooleanField(default=False)
    eu_adequacy = models.BooleanField(
        default=False, help_text="The country has an EU GDPR adequacy decision."
    )
    certifications = models.JSONField(default=list, blank=True)
    sovereign = models.BooleanField(default=False)
    drained = models.BooleanField(default=False, help_text="Kill switch: route nothing here.")
    owner = models.CharField(max_length=16, choices=Owner.choices, default=Owner.TESSERACT)
    carbon_intensity_g_per_kwh = models.PositiveIntegerField(
        null=True, blank=True, help_text="Grid carbon intensity; blank when unknown."
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(latitude__gte=-90, latitude__lte=90)
                & models.Q(longitude__gte=-180, longitude__lte=180),
                name="region_coordinates_on_earth",
            ),
            models.CheckConstraint(
                condition=~models.Q(eu_member=True, eea_member=False),
                name="region_eu_implies_eea",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def jurisdictions(self) -> frozenset[str]:
        return jurisdictions(self.country_code, eu=self.eu_member, eea=self.eea_member)


class RegionLatency(models.Model):
    """Measured round-trip time from one region to another (the latency map's seed).

    Directional, as published: the Azure matrix is mildly asymmetric.
    """

    src = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="+")
    dst = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="+")
    rtt_p50_ms = models.FloatField()
    rtt_p95_ms = models.FloatField()
    source = models.CharField(max_length=120)
    measured_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["src", "dst"], name="regionlatency_unique_pair"),
            models.CheckConstraint(
                condition=~models.Q(src=models.F("dst")), name="regionlatency_distinct_regions"
            ),
            models.CheckConstraint(
                condition=models.Q(rtt_p50_ms__gt=0)
                & models.Q(rtt_p95_ms__gte=models.F("rtt_p50_ms")),
                name="regionlatency_positive_and_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.src} → {self.dst}: {self.rtt_p50_ms} ms"


class Chip(models.Model):
    class Kind(models.TextChoices):
        GPU = "gpu", "GPU"
        LPU = "lpu", "LPU"
        WAFER_SCALE = "wafer_scale", "Wafer-scale engine"
        TPU = "tpu", "TPU"
        RDU = "rdu", "RDU"
        CPU = "cpu", "CPU"

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    vendor = models.CharField(max_length=40)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    memory_gb = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["vendor", "name"]

    def __str__(self) -> str:
        return self.name


class ClusterQuerySet(models.QuerySet["Cluster"]):
    def public(self) -> ClusterQuerySet:
        return self.filter(organization__isnull=True)

    def for_org(self, org: Tenant) -> ClusterQuerySet:
        """An organization's own private clusters (tenancy: `accounts.querysets`)."""
        return self.filter(organization=org)


class Cluster(models.Model):
    """A group of accelerators of one kind in one region, run by us or a partner.

    A cluster with an `organization` is that organization's private cluster (bring
    your own deployment): only its keys are routed to its deployments, no other
    organization can see it, and its tokens are billed at the tier's platform fee,
    not at provider prices. Its slug starts with `o<org id>-`, so a name clash can
    only ever be with the organization's own clusters.
    """

    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=120)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="clusters")
    chip = models.ForeignKey(Chip, on_delete=models.PROTECT, related_name="clusters")
    operator = models.CharField(max_length=60, help_text="Who runs it, e.g. Tesseract, Groq.")
    owner = models.CharField(max_length=16, choices=Owner.choices, default=Owner.TESSERACT)
    accelerators = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    certifications = models.JSONField(
        default=list,
        blank=True,
        help_text="What the operator holds for this cluster (HIPAA BAA, SOC 2, …). "
        "A backend is certified for its region's tags plus these.",
    )
    drained = models.BooleanField(default=False, help_text="Kill switch: route nothing here.")
    organization = models.ForeignKey(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="private_clusters",
        help_text="Blank: a public cluster. Set: this organization's private cluster.",
    )
    provider = models.ForeignKey(
        "Provider",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="A private cluster's own provider row: how to authenticate to its "
        "endpoints, with the credential its organization entered (sealed).",
    )

    objects = ClusterQuerySet.as_manager()

    class Meta:
        ordering = ["region__name", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(accelerators__gte=1), name="cluster_has_accelerators"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class AIModel(models.Model):
    """A model that clients ask for by `slug` (the OpenAI `model` field)."""

    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=120)
    family = models.CharField(max_length=40)
    parameters_b = models.DecimalField(
        max_digits=8, decimal_places=2, help_text="Parameters, in billions."
    )
    context_length = models.PositiveIntegerField()

    class Meta:
        ordering = ["family", "parameters_b"]
        verbose_name = "model"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(parameters_b__gt=0) & models.Q(context_length__gt=0),
                name="aimodel_positive_size",
            ),
        ]

    def __str__(self) -> str:
        return self.slug


class Provider(models.Model):
    """Who serves deployments over an OpenAI-compatible API, and how to authenticate.

    A hosted API (Groq, Cerebras, Together, OpenAI, …) or a server of one's own (vLLM,
    SGLang, TGI, llama.cpp, Ollama). Its credential is kept sealed
    (`backends.sealing`): `credential_sealed` is a Fernet token, `credential_last4`
    all an operator ever sees again. `status` goes to MISCONFIGURED when the provider
    rejects the credential (401/403): its deployments leave the plans until an
    operator enters a working one (`backends.providers`).
    """

    class Auth(models.TextChoices):
        BEARER = "bearer", "Authorization: Bearer <credential>"
        HEADER = "header", "A named header (e.g. api-key: <credential>)"
        NONE = "none", "None"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        MISCONFIGURED = "misconfigured", "Misconfigured (credential rejected)"
        DISABLED = "disabled", "Disabled by an operator"

    slug = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=120)
    preset = models.CharField(
        max_length=40, blank=True, help_text="The preset it was made from (backends.presets)."
    )
    base_url = models.URLField(
        max_length=300, help_text="The OpenAI-compatible base URL, ending in /v1."
    )
    auth_style = models.CharField(max_length=8, choices=Auth.choices, default=Auth.BEARER)
    auth_header = models.CharField(
        max_length=80, blank=True, help_text="The header that carries the credential (HEADER)."
    )
    extra_headers = models.JSONField(
        default=dict, blank=True, help_text="Sent with every request; never secrets."
    )
    connect_timeout_s = models.FloatField(default=5.0)
    first_token_timeout_s = models.FloatField(
        null=True, blank=True, help_text="Blank: TESSERACT_FIRST_TOKEN_TIMEOUT_S."
    )
    ignores_include_usage = models.BooleanField(
        default=False,
        help_text="Quirk: streams carry no usage; tokens are estimated (usage_source=estimated).",
    )
    exposes_metrics = models.BooleanField(
        default=False,
        help_text="The server serves Prometheus /metrics beside its /v1 (vLLM, SGLang, TGI, "
        "llama.cpp): scraped with the credential for running and waiting requests. "
        "Hosted APIs do not.",
    )
    credential_sealed = models.TextField(blank=True, editable=False)
    credential_last4 = models.CharField(max_length=4, blank=True, editable=False)
    credential_set_at = models.DateTimeField(null=True, blank=True, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.CharField(max_length=300, blank=True)
    status_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(auth_style="header", auth_header=""),
                name="provider_header_auth_names_header",
            ),
            models.CheckConstraint(
                condition=models.Q(connect_timeout_s__gt=0)
                & (
                    models.Q(first_token_timeout_s__isnull=True)
                    | models.Q(first_token_timeout_s__gt=0)
                ),
                name="provider_timeouts_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def has_credential(self) -> bool:
        return bool(self.credential_sealed)

    @property
    def credential_hint(self) -> str:
        """What the admin and the API show of the credential: `…abcd`, or nothing."""
        return f"…{self.credential_last4}" if self.credential_sealed else ""


class DeploymentQuerySet(models.QuerySet["Deployment"]):
    def public(self) -> DeploymentQuerySet:
        return self.filter(cluster__organization__isnull=True)

    def for_org(self, org: Tenant) -> DeploymentQuerySet:
        """An organization's own private deployments."""
        return self.filter(cluster__organization=org)


class Deployment(models.Model):
    """A routable backend: one model served on one chip in one cluster.

    The performance profile predicts latency before any traffic is observed: time
    to first token at a reference prompt, prefill and decode speeds per request.
    Prices are what the provider charges us, in USD per 1M tokens.
    """

    class Adapter(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible HTTP (vLLM, SGLang, TGI, Groq, Cerebras, …)"
        SIMULATOR = "simulator", "Tesseract backend simulator"

    slug = models.SlugField(max_length=160, unique=True)
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="deployments")
    chip = models.ForeignKey(Chip, on_delete=models.PROTECT, related_name="deployments")
    model = models.ForeignKey(AIModel, on_delete=models.PROTECT, related_name="deployments")
    endpoint_url = models.URLField(
        blank=True, help_text="Blank: the provider's base URL. Ends in /v1."
    )
    provider = models.ForeignKey(
        Provider,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="deployments",
        help_text="Who serves it and how to authenticate; blank: no credentials sent.",
    )
    provider_model_id = models.CharField(
        max_length=200,
        blank=True,
        help_text="The provider's own name for the model (sent upstream); blank: its "
        "preset's id for the model, else the catalog's slug.",
    )
    adapter = models.CharField(max_length=16, choices=Adapter.choices, default=Adapter.SIMULATOR)
    priority_scheduling = models.BooleanField(
        default=False,
        help_text="The server orders its waiting requests by the priority each request "
        "carries (vLLM's --scheduling-policy priority): the gateway sends each request's "
        "deadline as its priority, so the earliest deadline is served first. Leave off "
        "for a server that refuses a priority (vLLM's default policy) or a provider's API.",
    )
    price_input_per_mtok = models.DecimalField(max_digits=10, decimal_places=4)
    price_output_per_mtok = models.DecimalField(max_digits=10, decimal_places=4)
    concurrency_slots = models.PositiveIntegerField()
    ttft_ms = models.FloatField(help_text="Time to first token at the reference prompt.")
    reference_prompt_tokens = models.PositiveIntegerField()
    prefill_tokens_per_s = models.FloatField()
    decode_tokens_per_s = models.FloatField()
    loaded = models.BooleanField(default=True, help_text="The model is in accelerator memory.")
    drained = models.BooleanField(default=False, help_text="Kill switch: route nothing here.")
    health = models.CharField(
        max_length=16,
        choices=Health.choices,
        default=Health.HEALTHY,
        help_text="Kept by the health checks (with hysteresis); the live copy is in Redis.",
    )
    health_since = models.DateTimeField(null=True, blank=True)
    profile_source = models.TextField(blank=True, help_text="Where the profile numbers come from.")

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "chip", "model"], name="deployment_unique_per_cluster"
            ),
            models.CheckConstraint(
                condition=models.Q(price_input_per_mtok__gte=0)
                & models.Q(price_output_per_mtok__gte=0),
                name="deployment_prices_not_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(concurrency_slots__gte=1), name="deployment_has_slots"
            ),
            models.CheckConstraint(
                condition=models.Q(ttft_ms__gte=0)
                & models.Q(prefill_tokens_per_s__gt=0)
                & models.Q(decode_tokens_per_s__gt=0),
                name="deployment_profile_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def base_url(self) -> str:
        """Where to send requests: the deployment's own URL, else its provider's."""
        if self.endpoint_url or self.provider is None:
            return self.endpoint_url
        return self.provider.base_url

    @property
    def upstream_model(self) -> str:
        """The model id sent upstream: the deployment's `provider_model_id`, else its
        provider's preset's id for the model, else the catalog's slug."""
        if self.provider_model_id:
            return self.provider_model_id
        if self.provider is not None and self.provider.preset:
            from backends.presets import PRESETS

            preset = PRESETS.get(self.provider.preset)
            if preset is not None and self.model.slug in preset.models:
                return preset.models[self.model.slug]
        return self.model.slug

    @property
    def org_id(self) -> int | None:
        """The organization whose private deployment this is (None: public)."""
        return self.cluster.organization_id


# --------------------------------------------------------------------------- the maps
# What the control plane observes and decides. Every row is history: the live values the
# gateways route on are in Redis (`backends.livestate`); these are for the console and
# the audit trail.


class HealthEvent(models.Model):
    """A deployment's health changed, and why."""

    class Source(models.TextChoices):
        CHECK = "check", "Active health check"
        PASSIVE = "passive", "Failures seen by the gateway"
        OPERATOR = "operator", "Operator"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    previous = models.CharField(max_length=16, choices=Health.choices)
    current = models.CharField(max_length=16, choices=Health.choices)
    source = models.CharField(max_length=16, choices=Source.choices)
    reason = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.deployment_id}: {self.previous} → {self.current}"


class LatencyProbe(models.Model):
    """One RTT measurement from a gateway region to a cluster, checked against physics."""

    class Verdict(models.TextChoices):
        OK = "ok", "Plausible"
        BELOW_FLOOR = "below_floor", "Below the speed-of-light floor: a measurement error"
        DEGRADED_PATH = "degraded_path", "Far above the floor: a degraded path"
        FAILED = "failed", "No answer"

    src_region = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="+")
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="probes")
    rtt_ms = models.FloatField(null=True, blank=True)
    ewma_ms = models.FloatField(null=True, blank=True, help_text="After this sample, if used.")
    floor_ms = models.FloatField(help_text="Great-circle round trip at 200,000 km/s.")
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    measured_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-measured_at"]
        indexes = [models.Index(fields=["cluster", "-measured_at"])]

    def __str__(self) -> str:
        return f"{self.src_region_id}→{self.cluster_id}: {self.rtt_ms} ms ({self.verdict})"


class PlacementAction(models.Model):
    """A proposal to load or unload a model somewhere, and what became of it."""

    # The planner (`backends.planner`, pure) names the kinds and outcomes it reasons about.
    class Kind(models.TextChoices):
        LOAD = planner.LOAD, "Load"
        UNLOAD = planner.UNLOAD, "Unload"

    class Status(models.TextChoices):
        RECOMMENDED = "recommended", "Recommended (not applied)"
        DISMISSED = "dismissed", "Dismissed by an operator"
        APPLIED = planner.APPLIED, "Applied"
        FAILED = planner.FAILED, "Failed"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices)
    reason = models.TextField()
    #: predicted latency saved (ms per minute of traffic) per accelerator the action uses
    benefit = models.FloatField(default=0.0)
    demand = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.deployment_id} ({self.status})"


class SessionMove(models.Model):
    """A session left the deployment holding its context: staying would break its deadline."""

    session_id = models.CharField(max_length=200, db_index=True)
    org_id = models.BigIntegerField(db_index=True)
    from_deployment = models.CharField(max_length=160)
    to_deployment = models.CharField(max_length=160)
    reason = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.session_id}: {self.from_deployment} → {self.to_deployment}"


class ControlSettings(models.Model):
    """Operator switches for the control plane (one row)."""

    class PlacementMode(models.TextChoices):
        RECOMMEND = "recommend", "Recommend only"
        APPLY = "apply", "Apply"

    placement_mode = models.CharField(
        max_length=16, choices=PlacementMode.choices, default=PlacementMode.RECOMMEND
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "control settings"

    def __str__(self) -> str:
        return f"placement: {self.placement_mode}"

    @classmethod
    def current(cls) -> ControlSettings:
        settings, _ = cls.objects.get_or_create(pk=1)
        return settings
