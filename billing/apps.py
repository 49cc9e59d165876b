from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from accounts import keycache
        from billing import limits, money_tasks, signals  # noqa: F401  (receivers and tasks register)

        if limits.with_limits not in keycache.LOAD_HOOKS:
            keycache.LOAD_HOOKS.append(limits.with_limits)  # limits ride in the resolved key
