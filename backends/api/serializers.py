"""The operator API's shapes for providers: the credential is write-only."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from backends import sealing
from backends.models import Provider
from backends.presets import PRESETS


class ProviderSerializer(serializers.ModelSerializer):
    preset = serializers.ChoiceField(
        choices=[("", "none"), *sorted((k, p.name) for k, p in PRESETS.items())],
        required=False,
        allow_blank=True,
        help_text="Fills base_url, auth_style, auth_header and quirks left out.",
    )
    base_url = serializers.URLField(required=False, max_length=300)
    credential = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=False,
        trim_whitespace=True,
        help_text="The provider's API key: sealed at rest, never returned.",
    )
    credential_hint = serializers.CharField(read_only=True, help_text="'…' + its last four.")
    deployments = serializers.SerializerMethodField()

    class Meta:
        model = Provider
        fields = (
            "slug", "name", "preset", "base_url", "auth_style", "auth_header", "extra_headers",
            "connect_timeout_s", "first_token_timeout_s", "ignores_include_usage",
            "exposes_metrics", "status", "status_reason", "status_since", "credential",
            "credential_hint", "credential_set_at", "deployments",
        )  # fmt: skip
        read_only_fields = ("status_reason", "status_since", "credential_set_at")

    def get_deployments(self, obj: Provider) -> list[str]:
        return sorted(d.slug for d in obj.deployments.all())

    def validate_extra_headers(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise serializers.ValidationError("An object of header names to string values.")
        return value

    def validate_credential(self, value: str) -> str:
        if any(c in value for c in "\r\n\x00"):
            raise serializers.ValidationError("The credential contains a line break.")
        try:
            sealing.seal(value)  # the keys are there and work: nothing is saved otherwise
        except sealing.SealingError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        key = attrs.get("preset") or ""
        if key and self.instance is None:
            chosen = PRESETS[key]
            attrs.setdefault("base_url", chosen.base_url)
            attrs.setdefault("auth_style", chosen.auth_style)
            attrs.setdefault("auth_header", chosen.auth_header)
            attrs.setdefault("ignores_include_usage", chosen.ignores_include_usage)
            attrs.setdefault("exposes_metrics", chosen.exposes_metrics)
        merged = {
            "base_url": getattr(self.instance, "base_url", ""),
            "auth_style": getattr(self.instance, "auth_style", Provider.Auth.BEARER),
            "auth_header": getattr(self.instance, "auth_header", ""),
            **attrs,
        }
        if not merged["base_url"]:
            raise serializers.ValidationError({"base_url": "Give a base URL or a preset."})
        if merged["auth_style"] == Provider.Auth.HEADER and not merged["auth_header"]:
            raise serializers.ValidationError({"auth_header": "Name the credential's header."})
        return attrs


class PresetSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    base_url = serializers.CharField()
    auth_style = serializers.CharField()
    auth_header = serializers.CharField()
    self_hosted = serializers.BooleanField()
    ignores_include_usage = serializers.BooleanField()
    exposes_metrics = serializers.BooleanField()
    notes = serializers.CharField()
    models = serializers.DictField(child=serializers.CharField())
    prices = serializers.SerializerMethodField()
    speeds = serializers.SerializerMethodField()

    def get_prices(self, preset: Any) -> dict[str, dict[str, str]]:
        out = {}
        for model in preset.models:
            price = preset.price(model)
            if price is not None:
                out[model] = {
                    "input_per_mtok": str(price.input_per_mtok),
                    "output_per_mtok": str(price.output_per_mtok),
                    "source": price.source,
                }
        return out

    def get_speeds(self, preset: Any) -> dict[str, dict[str, Any]]:
        out = {}
        for model in preset.models:
            speed = preset.speed(model)
            if speed is not None:
                out[model] = {
                    "ttft_ms": speed.ttft_ms,
                    "decode_tokens_per_s": speed.decode_tokens_per_s,
                    "source": speed.source,
                }
        return out
