"""The tiers Tesseract ships with (seeded by a migration; operators edit them in the admin).

| tier       | req/min | tokens/min | cap/month | latency obj. (default TTFT) | availability | margin | credit/miss | base fee | grace |
|------------|--------:|-----------:|----------:|-----------------------------|-------------:|-------:|------------:|---------:|------:|
| Free       |      60 |    100,000 |       $10 | none (2,000 ms)             |         none |    30% |          0% |       $0 |  3 d |
| Pro        |   1,000 |  2,000,000 |    $2,000 | 99.0% (800 ms)              |        99.5% |    20% |         10% |      $49 |  7 d |
| Enterprise |  10,000 | 20,000,000 |   $50,000 | 99.5% (500 ms)              |        99.9% |    12% |         25% |   $1,500 | 30 d |

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
FREE = TierDefaults("free", "Free", 60, 100_000, D("10"), None, 2000, None, D("30"), D("0"), D("0"), 3, D("0"), D("0"))  # fmt: skip
PRO = TierDefaults("pro", "Pro", 1_000, 2_000_000, D("2000"), D("99.0"), 800, D("99.5"), D("20"), D("10"), D("49"), 7, D("0.0001"), D("0.05"))  # fmt: skip
ENTERPRISE = TierDefaults("enterprise", "Enterprise", 10_000, 20_000_000, D("50000"), D("99.5"), 500, D("99.9"), D("12"), D("25"), D("1500"), 30, D("0.00005"), D("0.02"))  # fmt: skip
DEFAULT_TIERS = (FREE, PRO, ENTERPRISE)
