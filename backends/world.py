"""The demo world: a global mesh of inference backends built from real data.

Pure Python (no Django import) so that the same world feeds the database loader
(`backends.demo`), the routing benchmark (`bench/`) and the backend simulator.

Inputs, all in the documented formats of `backends/data/PROVENANCE.md`:

* a **region table** (CSV): `region, region_slug, physical_location, iso2, country,
  geo_group, latitude, longitude, eu_member, eea_member, eu_adequacy_decision`;
* an **RTT table**, either long (`src_region, dst_region, rtt_p50_ms[, rtt_p95_ms]`)
  or a square matrix (first column `Source`, one column per destination region);
* the **hardware profiles** (`hw_provider_profiles.csv`) and the **price list**
  (`llm_api_prices_litellm_llama.csv`).

Every speed and price in the world comes from a named row of those files (see
`PROFILE_SOURCES`). What is *our* choice, and labelled as such, is where the
clusters stand (`HUBS`, `EDGES`, `PARTNERS`) and how many concurrent requests each
holds: public data says how fast a chip is, not how big a fleet we own.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
REGIONS_CSV = DATA_DIR / "azure_regions.csv"
RTT_CSV = DATA_DIR / "azure_region_rtt_long_2026-07.csv"
PROFILES_CSV = DATA_DIR / "hw_provider_profiles.csv"
PRICES_CSV = DATA_DIR / "llm_api_prices_litellm_llama.csv"

#: Light in optical fibre covers about 200,000 km/s (refractive index ~1.5).
FIBER_KM_PER_MS = 200.0
EARTH_RADIUS_KM = 6371.0088

#: The Azure matrix has no diagonal. Traffic that stays inside one region still
#: crosses a metro network; 1 ms is our modelling assumption, not a measurement.
INTRA_REGION_RTT_MS = 1.0


class WorldDataError(ValueError):
    """A data file is missing a column, a row or a value the world needs."""


# --------------------------------------------------------------------------- types


def jurisdictions(country_code: str, *, eu: bool, eea: bool) -> frozenset[str]:
    """Legal areas a site belongs to: its country code, plus EU and EEA where they apply."""
    tags = {country_code.upper()}
    if eu:
        tags.add("EU")
    if eea:
        tags.add("EEA")
    return frozenset(tags)


@dataclass(frozen=True, slots=True)
class RegionSpec:
    slug: str
    name: str
    physical_location: str
    country_code: str
    country: str
    geo_group: str
    latitude: float
    longitude: float
    eu_member: bool
    eea_member: bool
    eu_adequacy: bool
    certifications: frozenset[str] = frozenset()
    sovereign: bool = False

    @property
    def jurisdictions(self) -> frozenset[str]:
        return jurisdictions(self.country_code, eu=self.eu_member, eea=self.eea_member)


@dataclass(frozen=True, slots=True)
class ChipSpec:
    slug: str
    name: str
    vendor: str
    kind: str  # one of backends.models.Chip.Kind values


@dataclass(frozen=True, slots=True)
class ModelSpec:
    slug: str
    name: str
    family: str
    parameters_b: float
    context_length: int


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """How one chip serves one model, with the rows the numbers came from."""

    chip: str
    model: str
    ttft_ms: float  # time to first token at `reference_prompt_tokens`, one request
    reference_prompt_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float  # per request, after the first token
    price_input_per_mtok: float  # USD per 1M input tokens
    price_output_per_mtok: float
    sources: tuple[str, ...]

    @property
    def ttft_floor_ms(self) -> float:
        """TTFT with an empty prompt: the part of TTFT that is not prefill."""
        prefill_ms = 1000.0 * self.reference_prompt_tokens / self.prefill_tokens_per_s
        return max(self.ttft_ms - prefill_ms, 0.0)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    slug: str
    name: str
    region: str
    operator: str
    owner: str  # "tesseract" or "partner"
    chip: str
    accelerators: int
    #: What the operator holds for this cluster (a HIPAA BAA, a SOC 2 report): it
    #: follows who runs the machines, so a partner next to our site does not inherit ours.
    certifications: frozenset[str] = frozenset()


def certifications(region: RegionSpec, cluster: ClusterSpec) -> frozenset[str]:
    """What a backend is certified for: the site's tags plus its operator's."""
    return region.certifications | cluster.certifications


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    slug: str
    cluster: str
    model: str
    concurrency_slots: int
    profile: ProfileSpec


@dataclass(frozen=True)
class WorldSpec:
    regions: Mapping[str, RegionSpec]
    chips: Mapping[str, ChipSpec]
    models: Mapping[str, ModelSpec]
    clusters: Mapping[str, ClusterSpec]
    deployments: Mapping[str, DeploymentSpec]
    #: (src slug, dst slug) -> (p50 ms, p95 ms); src != dst
    rtt: Mapping[tuple[str, str], tuple[float, float]] = field(repr=False)

    def rtt_ms(self, src: str, dst: str) -> float:
        """Median RTT between two regions (the intra-region assumption on the diagonal)."""
        if src == dst:
            return INTRA_REGION_RTT_MS
        return self.rtt[(src, dst)][0]

    def floor_ms(self, src: str, dst: str) -> float:
        a, b = self.regions[src], self.regions[dst]
        return physical_rtt_floor_ms(a.latitude, a.longitude, b.latitude, b.longitude)


# --------------------------------------------------------------------------- physics


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a spherical Earth."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def physical_rtt_floor_ms(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """The fastest round trip physics allows: there and back at the speed of light in fibre."""
    return 2 * great_circle_km(lat1, lon1, lat2, lon2) / FIBER_KM_PER_MS


#: Cold start: weights in bf16 (2 bytes per parameter) read from storage into
#: accelerator memory at an aggregate 4 GB/s, plus 10 s of process start, runtime
#: initialisation and warm-up. 8B -> 14 s, 70B -> 45 s, 405B -> 212.5 s. The simulator
#: emulates it (times its time scale); placement weighs it against the demand it serves.
COLD_START_FIXED_S = 10.0
WEIGHT_BYTES_PER_PARAM = 2
LOAD_BYTES_PER_S = 4e9


def cold_start_s(parameters_b: float) -> float:
    """Seconds to load a model of `parameters_b` billion parameters (simulated seconds,
    before the simulator's time scale)."""
    return COLD_START_FIXED_S + parameters_b * 1e9 * WEIGHT_BYTES_PER_PARAM / LOAD_BYTES_PER_S


# --------------------------------------------------------------------------- readers


def _read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(required) - set(reader.fieldnames or ())
        if missing:
            raise WorldDataError(f"{path.name}: missing columns {sorted(missing)}")
        return list(reader)


def _flag(value: str) -> bool:
    return value.strip() in {"1", "true", "True", "yes"}


def load_regions(path: Path = REGIONS_CSV) -> dict[str, RegionSpec]:
    """Region table -> specs keyed by slug. Certifications are added by `demo_world`."""
    rows = _read_csv(
        path, ["region", "region_slug", "iso2", "country", "latitude", "longitude", "eu_member"]
    )
    regions = {}
    for row in rows:
        spec = RegionSpec(
            slug=row["region_slug"].strip(),
            name=row["region"].strip(),
            physical_location=row.get("physical_location", "").strip(),
            country_code=row["iso2"].strip().upper(),
            country=row["country"].strip(),
            geo_group=row.get("geo_group", "").strip(),
            latitude=float(row["latitude"]),
            longitude=float(row["longitude"]),
            eu_member=_flag(row["eu_member"]),
            eea_member=_flag(row.get("eea_member", "0")),
            eu_adequacy=_flag(row.get("eu_adequacy_decision", "0")),
        )
        regions[spec.slug] = spec
    return regions


def load_rtt(
    path: Path, regions: Mapping[str, RegionSpec]
) -> dict[tuple[str, str], tuple[float, float]]:
    """Read an RTT table in long or matrix form; region names or slugs both work.

    In the long form a missing p95 is taken as the p50. Cells that are empty are
    skipped (the matrix diagonal); a name that is not in the region table is an error.
    """
    by_name = {r.name: r.slug for r in regions.values()} | {s: s for s in regions}

    def slug(name: str) -> str:
        try:
            return by_name[name.strip()]
        except KeyError:
            raise WorldDataError(f"{path.name}: unknown region {name!r}") from None

    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    rtt: dict[tuple[str, str], tuple[float, float]] = {}
    if header[0].strip().lower() == "source":
        for row in _read_csv(path, ["Source"]):
            src = slug(row["Source"])
            for dst_name, cell in row.items():
                if dst_name == "Source" or not cell.strip():
                    continue
                ms = float(cell)
                rtt[(src, slug(dst_name))] = (ms, ms)
    else:
        for row in _read_csv(path, ["src_region", "dst_region", "rtt_p50_ms"]):
            p50 = float(row["rtt_p50_ms"])
            p95 = float(row.get("rtt_p95_ms") or p50)
            rtt[(slug(row["src_region"]), slug(row["dst_region"]))] = (p50, p95)
    return rtt


# --------------------------------------------------------------------------- profiles

CHIPS = {
    "nvidia-h100": ChipSpec("nvidia-h100", "NVIDIA H100 SXM 80GB", "NVIDIA", "gpu"),
    "groq-lpu": ChipSpec("groq-lpu", "Groq LPU", "Groq", "lpu"),
    "cerebras-wse3": ChipSpec("cerebras-wse3", "Cerebras WSE-3 (CS-3)", "Cerebras", "wafer_scale"),
}

MODELS = {
    "llama-3.1-8b-instruct": ModelSpec(
        "llama-3.1-8b-instruct", "Llama 3.1 8B Instruct", "llama-3.1", 8, 131072
    ),
    "llama-3.3-70b-instruct": ModelSpec(
        "llama-3.3-70b-instruct", "Llama 3.3 70B Instruct", "llama-3.3", 70, 131072
    ),
    "llama-3.1-405b-instruct": ModelSpec(
        "llama-3.1-405b-instruct", "Llama 3.1 405B Instruct", "llama-3.1", 405, 131072
    ),
}


@dataclass(frozen=True, slots=True)
class _RowKey:
    """Selects rows of hw_provider_profiles.csv by exact backend and model."""

    backend: str
    model: str
    concurrency: str | None = None


@dataclass(frozen=True, slots=True)
class ProfileSource:
    """Where each number of one (chip, model) profile comes from.

    `ttft` rows give TTFT and their prompt length; with several rows (one per client
    city) the smallest TTFT is kept, because API TTFTs include the client's network
    round trip and the closest client is the best estimate of the backend alone.
    `ttft_scale` derives a model's TTFT from another model's on the same chip by
    parameter count (prefill costs ~2·N FLOPs per token), where no row exists.
    """

    chip: str
    model: str
    ttft: _RowKey
    decode: _RowKey
    price_key: str
    ttft_scale: float = 1.0
    assumed_prompt_tokens: int | None = None


_OCI_70B = _RowKey("oci-genai-dedicated", "Llama-3.3-70B-Instruct", concurrency="1")

PROFILE_SOURCES = (
    # A dedicated GPU deployment (OCI's 70B load test at concurrency 1 is the only
    # single-request GPU number measured without a client network in the way).
    ProfileSource(
        "nvidia-h100",
        "llama-3.3-70b-instruct",
        _OCI_70B,
        _OCI_70B,
        "oci/meta.llama-3.1-70b-instruct",
    ),
    ProfileSource(
        "nvidia-h100",
        "llama-3.1-8b-instruct",
        _OCI_70B,
        _RowKey("fireworks", "Llama-3.1-8B-Instruct"),
        "fireworks_ai/accounts/fireworks/models/llama-v3p1-8b-instruct",
        ttft_scale=8 / 70,
    ),
    ProfileSource(
        "nvidia-h100",
        "llama-3.1-405b-instruct",
        _OCI_70B,
        _RowKey("fireworks", "Llama-3.1-405B-Instruct"),
        "fireworks_ai/accounts/fireworks/models/llama-v3p1-405b-instruct",
        ttft_scale=405 / 70,
    ),
    ProfileSource(
        "groq-lpu",
        "llama-3.1-8b-instruct",
        _RowKey("groq.com", "Llama-3-8B-Instruct"),
        _RowKey("groq", "Llama-3.1-8B-Instruct"),
        "groq/llama-3.1-8b-instant",
    ),
    ProfileSource(
        "groq-lpu",
        "llama-3.3-70b-instruct",
        _RowKey("groq.com", "Llama-3-70B-Instruct"),
        _RowKey("groq", "Llama-3.1-70B-Instruct"),
        "groq/llama-3.3-70b-versatile",
    ),
    # Cerebras publishes one TTFT (405B, 0.24 s, prompt length not stated): it is used
    # for every model on the chip, with an assumed 1,000-token prompt.
    ProfileSource(
        "cerebras-wse3",
        "llama-3.1-8b-instruct",
        _RowKey("cerebras", "Llama-3.1-405B-Instruct"),
        _RowKey("cerebras", "Llama-3.1-8B-Instruct"),
        "cerebras/llama3.1-8b",
        assumed_prompt_tokens=1000,
    ),
    ProfileSource(
        "cerebras-wse3",
        "llama-3.3-70b-instruct",
        _RowKey("cerebras", "Llama-3.1-405B-Instruct"),
        _RowKey("cerebras", "Llama-3.1-70B-Instruct"),
        "cerebras/llama-3.3-70b",
        assumed_prompt_tokens=1000,
    ),
)


def _rows(profiles: list[dict[str, str]], key: _RowKey, column: str) -> list[dict[str, str]]:
    found = [
        r
        for r in profiles
        if r["backend"] == key.backend
        and r["model"] == key.model
        and (key.concurrency is None or r["concurrency"] == key.concurrency)
        and r[column].strip()
    ]
    if not found:
        raise WorldDataError(f"no {column} for {key.backend} / {key.model}")
    return found


def _tokens(value: str) -> int:
    return int(float(value.strip().lstrip("~")))


def load_profiles(
    profiles_path: Path = PROFILES_CSV, prices_path: Path = PRICES_CSV
) -> dict[tuple[str, str], ProfileSpec]:
    profiles = _read_csv(
        profiles_path,
        ["backend", "model", "isl", "concurrency", "ttft_p50_s", "decode_tok_s_per_user_p50"],
    )
    prices = {
        r["litellm_key"]: r
        for r in _read_csv(
            prices_path, ["litellm_key", "input_usd_per_mtok", "output_usd_per_mtok"]
        )
    }
    out = {}
    for src in PROFILE_SOURCES:
        ttft_row = min(
            _rows(profiles, src.ttft, "ttft_p50_s"), key=lambda r: float(r["ttft_p50_s"])
        )
        decode_rows = _rows(profiles, src.decode, "decode_tok_s_per_user_p50")
        decode = statistics.median(float(r["decode_tok_s_per_user_p50"]) for r in decode_rows)
        ttft_ms = 1000.0 * float(ttft_row["ttft_p50_s"]) * src.ttft_scale
        prompt = src.assumed_prompt_tokens or _tokens(ttft_row["isl"])
        try:
            price = prices[src.price_key]
        except KeyError:
            raise WorldDataError(f"no price for {src.price_key}") from None
        # TTFT = prefill of the prompt + the first decode step: the step is charged at
        # the measured decode speed, the rest of the measured TTFT to prefill.
        first_step_ms = 1000.0 / decode
        prefill_ms = ttft_ms - first_step_ms if ttft_ms > first_step_ms else ttft_ms
        out[(src.chip, src.model)] = ProfileSpec(
            chip=src.chip,
            model=src.model,
            ttft_ms=round(ttft_ms, 3),
            reference_prompt_tokens=prompt,
            prefill_tokens_per_s=round(prompt / (prefill_ms / 1000.0), 1),
            decode_tokens_per_s=decode,
            price_input_per_mtok=float(price["input_usd_per_mtok"]),
            price_output_per_mtok=float(price["output_usd_per_mtok"]),
            sources=(
                f"ttft: hw_provider_profiles.csv {src.ttft.backend} / {src.ttft.model}"
                + (f" x {src.ttft_scale:.3g}" if src.ttft_scale != 1 else ""),
                f"decode: hw_provider_profiles.csv {src.decode.backend} / {src.decode.model}",
                f"price: llm_api_prices_litellm_llama.csv {src.price_key}",
            ),
        )
    return out


# --------------------------------------------------------------------------- placement
# Our choices, not data. Hubs serve every model; edges serve the small model only;
# partners run their own chips in a few regions.

#: Region slug -> models served by a Tesseract-owned H100 hub there.
_ALL = ("llama-3.1-8b-instruct", "llama-3.3-70b-instruct")
_BIG = (*_ALL, "llama-3.1-405b-instruct")
HUBS: dict[str, tuple[str, ...]] = {
    "eastus": _BIG,
    "westus2": _ALL,
    "southcentralus": _ALL,
    "canadacentral": _ALL,
    "brazilsouth": _ALL,
    "westeurope": _BIG,
    "northeurope": _ALL,
    "francecentral": _ALL,
    "germanywestcentral": _ALL,
    "swedencentral": _ALL,
    "uksouth": _ALL,
    "switzerlandnorth": _ALL,
    "uaenorth": _ALL,
    "southafricanorth": _ALL,
    "centralindia": _ALL,
    "southeastasia": _BIG,
    "japaneast": _ALL,
    "koreacentral": _ALL,
    "australiaeast": _ALL,
}
EDGES = (
    "westus",
    "centralus",
    "eastus2",
    "mexicocentral",
    "spaincentral",
    "italynorth",
    "polandcentral",
    "norwayeast",
    "israelcentral",
    "qatarcentral",
    "eastasia",
    "japanwest",
    "indonesiacentral",
    "newzealandnorth",
)
#: (operator, chip, region slug, models)
PARTNERS = (
    ("Groq", "groq-lpu", "southcentralus", _ALL),
    ("Groq", "groq-lpu", "eastus2", _ALL),
    ("Groq", "groq-lpu", "swedencentral", _ALL),
    ("Cerebras", "cerebras-wse3", "centralus", _ALL),
    ("Cerebras", "cerebras-wse3", "canadaeast", _ALL),
    ("Cerebras", "cerebras-wse3", "francecentral", _ALL),
)
#: Concurrent requests per deployment. GPU: OCI's 70B curve keeps per-request speed
#: within 25% of a lone request up to 32 concurrent requests per unit; a hub has 4
#: units per model, an edge 2. Partners publish no capacity; 64 is an assumption.
HUB_SLOTS, EDGE_SLOTS, PARTNER_SLOTS = 128, 64, 64
HUB_ACCELERATORS, EDGE_ACCELERATORS, PARTNER_ACCELERATORS = 32, 8, 16
#: Sites run in EU sovereign-cloud arrangements (our choice for the demo).
SOVEREIGN = frozenset({"francecentral", "germanywestcentral"})


def certify_region(region: RegionSpec) -> RegionSpec:
    """Tags that follow the place: GDPR in the EEA, sovereign-cloud sites."""
    certs = {"gdpr"} if region.eea_member else set()
    return replace(
        region,
        certifications=region.certifications | frozenset(certs),
        sovereign=region.slug in SOVEREIGN,
    )


def operator_certifications(owner: str, region: RegionSpec) -> frozenset[str]:
    """Our own clusters carry our SOC 2 report, and in the US our HIPAA BAA. Partners
    publish their own attestations; the demo claims none for them."""
    if owner != "tesseract":
        return frozenset()
    return frozenset({"soc2", "hipaa"} if region.country_code == "US" else {"soc2"})


def demo_world(
    regions_path: Path = REGIONS_CSV,
    rtt_path: Path = RTT_CSV,
    profiles_path: Path = PROFILES_CSV,
    prices_path: Path = PRICES_CSV,
) -> WorldSpec:
    """Build the demo mesh: every region of the table, our hubs, edges and partners."""
    regions = load_regions(regions_path)
    rtt = load_rtt(rtt_path, regions)
    profiles = load_profiles(profiles_path, prices_path)

    clusters: dict[str, ClusterSpec] = {}
    deployments: dict[str, DeploymentSpec] = {}

    def add(
        operator: str,
        chip: str,
        region: str,
        models: Iterable[str],
        *,
        label: str,
        slots: int,
        accelerators: int,
    ) -> None:
        if region not in regions:
            raise WorldDataError(f"placement names unknown region {region!r}")
        owner = "tesseract" if operator == "Tesseract" else "partner"
        cluster = ClusterSpec(
            slug=f"{region}-{operator.lower()}-{chip}",
            name=f"{regions[region].name} {label} ({CHIPS[chip].name})",
            region=region,
            operator=operator,
            owner=owner,
            chip=chip,
            accelerators=accelerators,
            certifications=operator_certifications(owner, regions[region]),
        )
        clusters[cluster.slug] = cluster
        for model in models:
            slug = f"{cluster.slug}--{model}"
            deployments[slug] = DeploymentSpec(
                slug, cluster.slug, model, slots, profiles[(chip, model)]
            )

    for region, models in HUBS.items():
        add(
            "Tesseract",
            "nvidia-h100",
            region,
            models,
            label="hub",
            slots=HUB_SLOTS,
            accelerators=HUB_ACCELERATORS,
        )
    for region in EDGES:
        add(
            "Tesseract",
            "nvidia-h100",
            region,
            ("llama-3.1-8b-instruct",),
            label="edge",
            slots=EDGE_SLOTS,
            accelerators=EDGE_ACCELERATORS,
        )
    for operator, chip, region, models in PARTNERS:
        add(
            operator,
            chip,
            region,
            models,
            label=operator,
            slots=PARTNER_SLOTS,
            accelerators=PARTNER_ACCELERATORS,
        )

    regions = {slug: certify_region(r) for slug, r in regions.items()}
    return WorldSpec(
        regions=regions,
        chips=dict(CHIPS),
        models=dict(MODELS),
        clusters=clusters,
        deployments=deployments,
        rtt=rtt,
    )
