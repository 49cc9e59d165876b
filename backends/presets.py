"""Presets for the common providers and inference servers: pure data, no database.

An operator adds a provider by choosing a preset and pasting a key (admin: Backends ›
Providers › Add): the preset fills in the base URL, how it authenticates, the provider's
own ids for the catalog's models, and its known quirks. List prices come from
`data/llm_api_prices_litellm_llama.csv` (litellm's price table; see
`data/PROVENANCE.md`), each with the row it was read from, and so do published speeds
(`data/hw_provider_profiles.csv`: TTFTs measured by thefastest.ai, which include the
measuring client's network, and per-request decode speeds; a model measured only as
Llama 3 or 3.1 stands for its 3.3 successor of the same size, as in `world.py`). A
self-hosted server has no list price and no published speed (it depends on your
hardware), and a preset without a row says so rather than inventing one.

Model ids are each provider's published names at the time of writing; a provider
renames models now and then, so they are defaults the operator can change per
deployment (`Deployment.provider_model_id`). Self-hosted servers (vLLM, SGLang, TGI,
llama.cpp, Ollama) serve whatever was loaded: their ids are the usual ones.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache

from backends.world import PRICES_CSV, PROFILES_CSV

SMALL, MEDIUM, LARGE = "llama-3.1-8b-instruct", "llama-3.3-70b-instruct", "llama-3.1-405b-instruct"
_HF = {
    SMALL: "meta-llama/Llama-3.1-8B-Instruct",
    MEDIUM: "meta-llama/Llama-3.3-70B-Instruct",
    LARGE: "meta-llama/Llama-3.1-405B-Instruct",
}


@dataclass(frozen=True)
class Price:
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    source: str  # the data row it was read from


@dataclass(frozen=True)
class Speed:
    """Published speeds of one model at one provider (`data/hw_provider_profiles.csv`).

    `ttft_ms` is the smallest median over the measuring clients' cities (it includes
    their network round trip); `decode_tokens_per_s` the median per-request speed.
    Either is None where the data has no row.
    """

    ttft_ms: float | None
    decode_tokens_per_s: float | None
    source: str


#: (backend, model) of hw_provider_profiles.csv: which rows measure a preset's model
Rows = tuple[str, str]


@dataclass(frozen=True)
class Preset:
    key: str
    name: str
    base_url: str
    auth_style: str  # Provider.Auth values: bearer, header, none
    auth_header: str = ""
    #: catalog model slug → the provider's own model id
    models: dict[str, str] = field(default_factory=dict)
    #: catalog model slug → litellm price key (`llm_api_prices_litellm_llama.csv`)
    price_keys: dict[str, str] = field(default_factory=dict)
    ignores_include_usage: bool = False
    self_hosted: bool = False
    #: the server serves Prometheus /metrics beside /v1, with gauges
    #: `backends.resources` reads (hosted APIs serve none)
    exposes_metrics: bool = False
    notes: str = ""
    #: catalog model slug → the profile rows of its TTFT and of its decode speed
    ttft_rows: dict[str, Rows] = field(default_factory=dict)
    decode_rows: dict[str, Rows] = field(default_factory=dict)

    def price(self, model: str) -> Price | None:
        key = self.price_keys.get(model)
        return None if key is None else list_price(key)

    def speed(self, model: str) -> Speed | None:
        ttft_key, decode_key = self.ttft_rows.get(model), self.decode_rows.get(model)
        if ttft_key is None and decode_key is None:
            return None
        ttft = [float(r["ttft_p50_s"]) * 1000 for r in _profile_rows(ttft_key, "ttft_p50_s")]
        decode = [
            float(r["decode_tok_s_per_user_p50"])
            for r in _profile_rows(decode_key, "decode_tok_s_per_user_p50")
        ]
        sources = [
            f"{what}: hw_provider_profiles.csv {key[0]} / {key[1]}"
            for what, key in (("ttft", ttft_key), ("decode", decode_key))
            if key is not None
        ]
        return Speed(
            round(min(ttft), 1) if ttft else None,
            round(statistics.median(decode), 1) if decode else None,
            "; ".join(sources),
        )


@cache
def _profiles() -> list[dict[str, str]]:
    with PROFILES_CSV.open(newline="") as f:
        return list(csv.DictReader(f))


def _profile_rows(key: Rows | None, column: str) -> list[dict[str, str]]:
    if key is None:
        return []
    return [r for r in _profiles() if (r["backend"], r["model"]) == key and r[column].strip()]


@cache
def _prices() -> dict[str, dict[str, str]]:
    """The newest litellm row of every price key."""
    rows: dict[str, dict[str, str]] = {}
    with PRICES_CSV.open(newline="") as f:
        for row in csv.DictReader(f):
            seen = rows.get(row["litellm_key"])
            version = tuple(int(p) for p in row["litellm_version"].split("."))
            if seen is None or version > tuple(int(p) for p in seen["litellm_version"].split(".")):
                rows[row["litellm_key"]] = row
    return rows


def list_price(key: str) -> Price | None:
    row = _prices().get(key)
    if row is None:
        return None
    return Price(
        Decimal(row["input_usd_per_mtok"]),
        Decimal(row["output_usd_per_mtok"]),
        f"llm_api_prices_litellm_llama.csv: {key} (litellm {row['litellm_version']})",
    )


PRESETS: dict[str, Preset] = {
    p.key: p
    for p in (
        Preset(
            "groq", "Groq", "https://api.groq.com/openai/v1", "bearer",
            models={SMALL: "llama-3.1-8b-instant", MEDIUM: "llama-3.3-70b-versatile"},
            price_keys={SMALL: "groq/llama-3.1-8b-instant", MEDIUM: "groq/llama-3.3-70b-versatile"},
            ttft_rows={SMALL: ("groq.com", "Llama-3-8B-Instruct"),
                       MEDIUM: ("groq.com", "Llama-3-70B-Instruct")},
            decode_rows={SMALL: ("groq", "Llama-3.1-8B-Instruct"),
                         MEDIUM: ("groq", "Llama-3.1-70B-Instruct")},
        ),
        Preset(
            "cerebras", "Cerebras", "https://api.cerebras.ai/v1", "bearer",
            models={SMALL: "llama3.1-8b", MEDIUM: "llama-3.3-70b"},
            price_keys={SMALL: "cerebras/llama3.1-8b", MEDIUM: "cerebras/llama-3.3-70b"},
            decode_rows={SMALL: ("cerebras", "Llama-3.1-8B-Instruct"),
                         MEDIUM: ("cerebras", "Llama-3.1-70B-Instruct")},
        ),
        Preset(
            "sambanova", "SambaNova Cloud", "https://api.sambanova.ai/v1", "bearer",
            models={SMALL: "Meta-Llama-3.1-8B-Instruct", MEDIUM: "Meta-Llama-3.3-70B-Instruct",
                    LARGE: "Meta-Llama-3.1-405B-Instruct"},
            price_keys={SMALL: "sambanova/Meta-Llama-3.1-8B-Instruct",
                        MEDIUM: "sambanova/Meta-Llama-3.3-70B-Instruct",
                        LARGE: "sambanova/Meta-Llama-3.1-405B-Instruct"},
            decode_rows={SMALL: ("sambanova", "Llama-3.1-8B-Instruct"),
                         MEDIUM: ("sambanova", "Llama-3.1-70B-Instruct"),
                         LARGE: ("sambanova", "Llama-3.1-405B-Instruct")},
        ),
        Preset(
            "together", "Together AI", "https://api.together.xyz/v1", "bearer",
            models={SMALL: "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
                    MEDIUM: "meta-llama/Llama-3.3-70B-Instruct-Turbo",
                    LARGE: "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo"},
            price_keys={SMALL: "together_ai/meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
                        MEDIUM: "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
                        LARGE: "together_ai/meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo"},
            ttft_rows={SMALL: ("together.ai", "Llama-3-8B-Instruct"),
                       MEDIUM: ("together.ai", "Llama-3-70B-Instruct")},
            decode_rows={SMALL: ("together.ai", "Llama-3-8B-Instruct"),
                         MEDIUM: ("together.ai", "Llama-3-70B-Instruct")},
        ),
        Preset(
            "fireworks", "Fireworks AI", "https://api.fireworks.ai/inference/v1", "bearer",
            models={SMALL: "accounts/fireworks/models/llama-v3p1-8b-instruct",
                    MEDIUM: "accounts/fireworks/models/llama-v3p3-70b-instruct",
                    LARGE: "accounts/fireworks/models/llama-v3p1-405b-instruct"},
            price_keys={
                m: f"fireworks_ai/{v}"
                for m, v in {SMALL: "accounts/fireworks/models/llama-v3p1-8b-instruct",
                             MEDIUM: "accounts/fireworks/models/llama-v3p3-70b-instruct",
                             LARGE: "accounts/fireworks/models/llama-v3p1-405b-instruct"}.items()
            },
            ttft_rows={SMALL: ("fireworks.ai", "Llama-3-8B-Instruct"),
                       MEDIUM: ("fireworks.ai", "Llama-3-70B-Instruct")},
            decode_rows={SMALL: ("fireworks", "Llama-3.1-8B-Instruct"),
                         MEDIUM: ("fireworks", "Llama-3.1-70B-Instruct"),
                         LARGE: ("fireworks", "Llama-3.1-405B-Instruct")},
        ),
        Preset(
            "deepinfra", "DeepInfra", "https://api.deepinfra.com/v1/openai", "bearer",
            models={SMALL: "meta-llama/Meta-Llama-3.1-8B-Instruct",
                    MEDIUM: "meta-llama/Llama-3.3-70B-Instruct",
                    LARGE: "meta-llama/Meta-Llama-3.1-405B-Instruct"},
            price_keys={SMALL: "deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct",
                        MEDIUM: "deepinfra/meta-llama/Llama-3.3-70B-Instruct",
                        LARGE: "deepinfra/meta-llama/Meta-Llama-3.1-405B-Instruct"},
        ),
        Preset(
            "openai", "OpenAI", "https://api.openai.com/v1", "bearer",
            notes="Serves none of the catalog's Llama models: map a deployment's model id by hand.",
        ),
        Preset(
            "vllm", "vLLM (self-hosted)", "http://127.0.0.1:8000/v1", "bearer", models=_HF,
            self_hosted=True, exposes_metrics=True,
            notes="Bearer only when started with --api-key; else choose none.",
        ),
        Preset(
            "sglang", "SGLang (self-hosted)", "http://127.0.0.1:30000/v1", "bearer", models=_HF,
            self_hosted=True, exposes_metrics=True,
            notes="Bearer only when started with --api-key; else choose none. /metrics "
            "only when started with --enable-metrics.",
        ),
        Preset(
            "tgi", "Text Generation Inference (self-hosted)", "http://127.0.0.1:8080/v1", "none",
            models=dict.fromkeys(_HF, "tgi"), self_hosted=True, ignores_include_usage=True,
            exposes_metrics=True,
            notes="Serves one model under the id 'tgi'. Versions that ignore stream_options "
            "send no usage in streams: tokens are estimated (usage_source=estimated).",
        ),
        Preset(
            "llamacpp", "llama.cpp server (self-hosted)", "http://127.0.0.1:8080/v1", "none",
            models=_HF, self_hosted=True, exposes_metrics=True,
            notes="Serves the one model it loaded whatever id is asked; bearer with --api-key; "
            "/metrics only when started with --metrics.",
        ),
        Preset(
            "ollama", "Ollama (self-hosted)", "http://127.0.0.1:11434/v1", "none",
            models={SMALL: "llama3.1:8b", MEDIUM: "llama3.3:70b", LARGE: "llama3.1:405b"},
            self_hosted=True,
        ),
    )
}  # fmt: skip


def preset(key: str) -> Preset:
    try:
        return PRESETS[key]
    except KeyError:
        raise ValueError(f"no preset {key!r}; one of {', '.join(sorted(PRESETS))}") from None
