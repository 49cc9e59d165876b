from typing import Any

from django.apps import AppConfig


class BackendsConfig(AppConfig):
    name = "backends"
    verbose_name = "Backends catalog"

    def ready(self) -> None:
        from backends import signals  # noqa: F401  (connects the receivers)
        from billing import pricebook

        if deployment_costs not in pricebook.COST_LOADERS:
            pricebook.COST_LOADERS.append(deployment_costs)  # rating reads the catalog's costs
        if private_deployments not in pricebook.PRIVATE_LOADERS:
            pricebook.PRIVATE_LOADERS.append(private_deployments)  # billed at the platform fee


def deployment_costs(slugs: set[str]) -> dict[str, Any]:
    """The provider's cost of each deployment, for `billing.pricebook` (one query)."""
    from backends.models import Deployment
    from billing.rating import Price

    return {
        slug: Price(cin, cout)
        for slug, cin, cout in Deployment.objects.filter(slug__in=slugs).values_list(
            "slug", "price_input_per_mtok", "price_output_per_mtok"
        )
    }


def private_deployments(slugs: set[str]) -> set[str]:
    """Which of `slugs` are private clusters' deployments (one query)."""
    from backends.models import Deployment

    return set(
        Deployment.objects.filter(slug__in=slugs)
        .exclude(cluster__organization=None)
        .values_list("slug", flat=True)
    )
