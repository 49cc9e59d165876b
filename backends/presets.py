"""Presets for the common providers and inference servers: pure data, no database.

An operator adds a provider by choosing a preset and pasting a key (admin: Backends ›
Providers › Add): the preset fills in the base URL, how it authenticates, the provider's
own ids for the catalog's models, and its known quirks. List prices come from
`data/llm_api_prices_litellm_llama.csv` (litellm's price table; see
`data/PROVENANCE.md`), each with the row it was read from; a self-hosted server has
no list price (you pay for the hardware), and a preset without a row says so rather
than inventing one.

Model ids are each provider's published names at the time of writing; a provider
renames models now and then, so they are defaults the operator can change per
deployment (`Deployment.provider_model_id`). Self-hosted servers (vLLM, SGLang, TGI,
llama.cpp, Ollama) serve whatever was loaded: their ids are the usual ones.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache

from backends.world import PRICES_CSV

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
    notes: str = ""

    def price(self, model: str) -> Price | None:
        key = self.price_keys.get(model)
        return None if key is None else list_price(key)


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
        ),
        Preset(
            "cerebras", "Cerebras", "https://api.cerebras.ai/v1", "bearer",
            models={SMALL: "llama3.1-8b", MEDIUM: "llama-3.3-70b"},
            price_keys={SMALL: "cerebras/llama3.1-8b", MEDIUM: "cerebras/llama-3.3-70b"},
        ),
        Preset(
            "sambanova", "SambaNova Cloud", "https://api.sambanova.ai/v1", "bearer",
            models={SMALL: "Meta-Llama-3.1-8B-Instruct", MEDIUM: "Meta-Llama-3.3-70B-Instruct",
                    LARGE: "Meta-Llama-3.1-405B-Instruct"},
            price_keys={SMALL: "sambanova/Meta-Llama-3.1-8B-Instruct",
                        MEDIUM: "sambanova/Meta-Llama-3.3-70B-Instruct",
                        LARGE: "sambanova/Meta-Llama-3.1-405B-Instruct"},
        ),
        Preset(
            "together", "Together AI", "https://api.together.xyz/v1", "bearer",
            models={SMALL: "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
                    MEDIUM: "meta-llama/Llama-3.3-70B-Instruct-Turbo",
                    LARGE: "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo"},
            price_keys={SMALL: "together_ai/meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
                        MEDIUM: "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
                        LARGE: "together_ai/meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo"},
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
            self_hosted=True, notes="Bearer only when started with --api-key; else choose none.",
        ),
        Preset(
            "sglang", "SGLang (self-hosted)", "http://127.0.0.1:30000/v1", "bearer", models=_HF,
            self_hosted=True, notes="Bearer only when started with --api-key; else choose none.",
        ),
        Preset(
            "tgi", "Text Generation Inference (self-hosted)", "http://127.0.0.1:8080/v1", "none",
            models=dict.fromkeys(_HF, "tgi"), self_hosted=True, ignores_include_usage=True,
            notes="Serves one model under the id 'tgi'. Versions that ignore stream_options "
            "send no usage in streams: tokens are estimated (usage_source=estimated).",
        ),
        Preset(
            "llamacpp", "llama.cpp server (self-hosted)", "http://127.0.0.1:8080/v1", "none",
            models=_HF, self_hosted=True,
            notes="Serves the one model it loaded whatever id is asked; bearer with --api-key.",
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
