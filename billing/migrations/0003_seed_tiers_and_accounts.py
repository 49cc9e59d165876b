"""Seed Free, Pro and Enterprise (values documented in `billing/tiers.py`), and open a
Free billing account for every organization that exists already."""

from django.db import migrations

from billing.tiers import DEFAULT_TIERS, FREE


def seed(apps, schema_editor):
    SlaTier = apps.get_model("billing", "SlaTier")
    BillingAccount = apps.get_model("billing", "BillingAccount")
    TierChange = apps.get_model("billing", "TierChange")
    Organization = apps.get_model("accounts", "Organization")
    for defaults in DEFAULT_TIERS:
        fields = defaults.fields()
        SlaTier.objects.get_or_create(slug=fields.pop("slug"), defaults=fields)
    free = SlaTier.objects.get(slug=FREE.slug)
    for org in Organization.objects.filter(billing_account__isnull=True):
        BillingAccount.objects.create(org=org, tier=free, created_at=org.created_at)
        TierChange.objects.create(org=org, tier=free, effective_at=org.created_at)


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_sla_tiers_rating_invoices_stripe")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
