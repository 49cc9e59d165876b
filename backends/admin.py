from django.contrib import admin

from backends.models import AIModel, Chip, Cluster, Deployment, Region, RegionLatency


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "slug",
        "country_code",
        "eu_member",
        "sovereign",
        "owner",
        "certifications",
    )
    list_filter = ("geo_group", "eu_member", "eea_member", "sovereign", "owner")
    search_fields = ("name", "slug", "country")


@admin.register(RegionLatency)
class RegionLatencyAdmin(admin.ModelAdmin):
    list_display = ("src", "dst", "rtt_p50_ms", "rtt_p95_ms", "source", "measured_at")
    list_select_related = ("src", "dst")
    search_fields = ("src__name", "dst__name")


@admin.register(Chip)
class ChipAdmin(admin.ModelAdmin):
    list_display = ("name", "vendor", "kind", "memory_gb")


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ("name", "region", "chip", "operator", "owner", "accelerators", "drained")
    list_filter = ("owner", "chip", "drained")
    list_select_related = ("region", "chip")


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "family", "parameters_b", "context_length")


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = (
        "slug",
        "chip",
        "model",
        "ttft_ms",
        "decode_tokens_per_s",
        "price_input_per_mtok",
        "price_output_per_mtok",
        "concurrency_slots",
        "loaded",
        "drained",
    )
    list_filter = ("chip", "model", "adapter", "loaded", "drained")
    list_select_related = ("chip", "model", "cluster")
    search_fields = ("slug",)
