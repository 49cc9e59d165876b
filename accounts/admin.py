from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import ValidationError
from django.db import transaction
from django.forms.models import BaseInlineFormSet

from accounts.audit import AuditEntry
from accounts.keycache import publish_change
from accounts.models import (
    ApiKey,
    Invitation,
    Membership,
    OperatorAction,
    Organization,
    Role,
    User,
)
from accounts.services import api_key_revoke


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ("email",)
    list_display = ("email", "name", "is_staff", "is_active", "date_joined")
    search_fields = ("email", "name")
    fieldsets = (
        (None, {"fields": ("email", "password", "name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class MembershipFormSet(BaseInlineFormSet):
    """The admin edits memberships in bulk: it must still leave every org an owner."""

    def clean(self) -> None:
        super().clean()
        if self.instance.pk is None:
            return
        owners_before = Membership.objects.filter(org=self.instance, role=Role.OWNER).exists()
        owners_after = any(
            form.cleaned_data.get("role") == Role.OWNER
            and not form.cleaned_data.get("DELETE", False)
            for form in self.forms
            if hasattr(form, "cleaned_data") and form.cleaned_data
        )
        if owners_before and not owners_after:
            raise ValidationError(
                f"{self.instance.name} must keep at least one owner: make someone else an "
                "owner before demoting or removing the last one."
            )


class MembershipInline(admin.TabularInline):
    model = Membership
    formset = MembershipFormSet
    extra = 0
    raw_id_fields = ("user",)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "require_2fa", "created_at")
    search_fields = ("name", "slug")
    inlines = (MembershipInline,)


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("email", "org", "role", "created_at", "expires_at", "accepted_at")
    exclude = ("token_digest",)


@admin.action(description="Revoke selected keys")
def revoke_keys(modeladmin, request, queryset):
    for key in queryset:
        api_key_revoke(api_key=key, by=request.user, reason="revoked in the admin")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Operators may inspect and revoke keys; keys are created by their owners only."""

    list_display = ("name", "display_prefix", "org", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "lookup", "org__name")
    readonly_fields = ("lookup", "digest", "created_at", "last_used_at", "created_by")
    actions = (revoke_keys,)

    def has_add_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        transaction.on_commit(lambda: publish_change(obj.lookup))


@admin.register(OperatorAction)
class OperatorActionAdmin(admin.ModelAdmin):
    """The operator log, read-only: entries are written by `record_operator_action`."""

    list_display = ("created_at", "actor_email", "action", "target", "reason")
    list_filter = ("action",)
    search_fields = ("actor_email", "target", "reason")
    date_hierarchy = "created_at"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log, to read: it is append-only (`manage.py audit_verify` checks it)."""

    list_display = ("chain", "seq", "at", "action", "actor", "request_id")
    list_filter = ("kind", "action")
    search_fields = ("request_id", "actor", "chain")
    ordering = ("-id",)
    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
