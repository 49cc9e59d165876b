"""Loads the price book that `billing.rating` rates a batch of usage with."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from billing import metering, rating
from billing.models import ListPrice, TierChange
from billing.tiers import FREE

#: Deployment slugs → the provider's cost. The catalog sits above billing in the layers
#: (pyproject's import contract), so it registers this in its `ready()`
#: (`backends.apps`); billing never imports it.
CostLoader = Callable[[set[str]], dict[str, rating.Price]]
COST_LOADERS: list[CostLoader] = []
#: Deployment slugs → those that are private clusters' (billed at the platform fee),
#: registered by the catalog the same way.
PrivateLoader = Callable[[set[str]], set[str]]
PRIVATE_LOADERS: list[PrivateLoader] = []


def _costs(slugs: set[str]) -> dict[str, rating.Price]:
    costs: dict[str, rating.Price] = {}
    for loader in COST_LOADERS:
        costs.update(loader(slugs))
    return costs


def load(
    *, org_ids: Iterable[int], deployments: Iterable[str], models: Iterable[str]
) -> rating.PriceBook:
    """Four queries, whatever the batch's size (two through the loaders)."""
    slugs = set(deployments)
    costs = _costs(slugs)
    private: set[str] = set()
    for find_private in PRIVATE_LOADERS:
        private |= find_private(slugs)
    margins: defaultdict[int, list[tuple[float, Decimal]]] = defaultdict(list)
    fees: defaultdict[int, list[tuple[float, rating.PlatformFee]]] = defaultdict(list)
    for org_id, since, margin, per_request, per_mtok in (
        TierChange.objects.filter(org_id__in=set(org_ids))
        .order_by("org_id", "effective_at", "pk")
        .values_list(
            "org_id",
            "effective_at",
            "tier__price_margin_pct",
            "tier__private_cluster_fee_per_request_usd",
            "tier__private_cluster_fee_per_mtok_usd",
        )
    ):
        margins[org_id].append((since.timestamp(), margin))
        fees[org_id].append((since.timestamp(), rating.PlatformFee(per_request, per_mtok)))
    list_prices: defaultdict[str, list[tuple[float, rating.Price]]] = defaultdict(list)
    for model, since, pin, pout in (
        ListPrice.objects.filter(model__in=set(models))
        .order_by("model", "effective_from")
        .values_list("model", "effective_from", "input_per_mtok_usd", "output_per_mtok_usd")
    ):
        list_prices[model].append((since.timestamp(), rating.Price(pin, pout)))
    return rating.PriceBook(
        costs=costs,
        margins=dict(margins),
        list_prices=dict(list_prices),
        default_margin_pct=FREE.price_margin_pct,
        private=frozenset(private),
        fees=dict(fees),
        default_fee=rating.PlatformFee(
            FREE.private_cluster_fee_per_request_usd, FREE.private_cluster_fee_per_mtok_usd
        ),
    )


def for_records(records: Sequence[metering.UsageRecord]) -> rating.PriceBook:
    return load(
        org_ids={r.org_id for r in records},
        deployments={r.deployment for r in records},
        models={r.served_model for r in records},
    )


def rate_record(book: rating.PriceBook, record: metering.UsageRecord) -> rating.Charge:
    """The charge of one usage record, at the prices in force when it completed."""
    return book.rate(
        org_id=record.org_id,
        deployment=record.deployment,
        model=record.served_model,
        at=record.created_at,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        recorded_cost_usd=Decimal(record.cost_usd),
    )


def charge_fields(charge: rating.Charge) -> dict[str, Any]:
    """The `UsageEvent` fields that store a charge."""
    price = charge.price
    return {
        "charge_usd": charge.amount,
        "price_input_per_mtok_usd": price.input_per_mtok if price else None,
        "price_output_per_mtok_usd": price.output_per_mtok if price else None,
        "fee_per_request_usd": charge.per_request,
    }
