"""The tiers Tesseract ships with (seeded by a migration; operators edit them in the admin).

| tier       | req/min | tok/min | cap/mo | latency (TTFT) | avail. | margin | credit | fee   |
|------------|--------:|--------:|-------:|----------------|-------:|-------:|-------:|------:|
| Free       |      60 |    100k |    $10 | none (2000 ms) |   none |    30% |     0% |    $0 |
| Pro        |   1,000 |      2M |  $2000 | 99.0% (800 ms) |  99.5% |    20% |    10% |   $49 |
| Enterprise |  10,000 |     20M |   $50k | 99.5% (500 ms) |  99.9% |    12% |    25% | $1500 |

Dunning grace before suspension: Free 3 days, Pro 7, Enterprise 30.
Free promises nothing, so it owes no credits. The margins fall as commitment grows; a
missed objective credits its percentage of the month's usage charges (each objective
once). Private-cluster platform fees (Pro $0.0001/request or $0.05/1M tokens,
Enterprise $0.00005 or $0.02) are stored for a later issue and not billed yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class TierDefaults:
    slug: str
    name: str
    requests_per_minute: int
    tokens_per_minute: int
    monthly_spend_cap_usd: Decimal | None
    latency_objective_pct: Decimal | None
    default_ttft_ms: int
    availability_objective_pct: Decimal | None
    price_margin_pct: Decimal
    credit_pct: Decimal
    base_fee_usd: Decimal
    dunning_grace_days: int
    private_cluster_fee_per_request_usd: Decimal
    private_cluster_fee_per_mtok_usd: Decimal

    def fields(self) -> dict[str, Any]:
        return asdict(self)


D = Decimal
FREE = TierDefaults(
    "free", "Free", requests_per_minute=60, tokens_per_minute=100_000,
    monthly_spend_cap_usd=D("10"), latency_objective_pct=None, default_ttft_ms=2000,
    availability_objective_pct=None, price_margin_pct=D("30"), credit_pct=D("0"),
    base_fee_usd=D("0"), dunning_grace_days=3,
    private_cluster_fee_per_request_usd=D("0"), private_cluster_fee_per_mtok_usd=D("0"),
)  # fmt: skip
PRO = TierDefaults(
    "pro", "Pro", requests_per_minute=1_000, tokens_per_minute=2_000_000,
    monthly_spend_cap_usd=D("2000"), latency_objective_pct=D("99.0"), default_ttft_ms=800,
    availability_objective_pct=D("99.5"), price_margin_pct=D("20"), credit_pct=D("10"),
    base_fee_usd=D("49"), dunning_grace_days=7,
    private_cluster_fee_per_request_usd=D("0.0001"), private_cluster_fee_per_mtok_usd=D("0.05"),
)  # fmt: skip
ENTERPRISE = TierDefaults(
    "enterprise", "Enterprise", requests_per_minute=10_000, tokens_per_minute=20_000_000,
    monthly_spend_cap_usd=D("50000"), latency_objective_pct=D("99.5"), default_ttft_ms=500,
    availability_objective_pct=D("99.9"), price_margin_pct=D("12"), credit_pct=D("25"),
    base_fee_usd=D("1500"), dunning_grace_days=30,
    private_cluster_fee_per_request_usd=D("0.00005"), private_cluster_fee_per_mtok_usd=D("0.02"),
)  # fmt: skip
DEFAULT_TIERS = (FREE, PRO, ENTERPRISE)
