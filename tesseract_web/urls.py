from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import include, path, reverse
from django_otp.admin import OTPAdminSite

from dashboards import views as dashboard_views

# The admin is for staff, and staff always use a second factor.
admin.site.__class__ = OTPAdminSite
admin.site.site_header = "Tesseract operations"
admin.site.site_title = "Tesseract"


def _admin_login(request: HttpRequest, extra_context: object = None) -> HttpResponse:
    """One sign-in page for everyone; it leads staff through 2FA on the way."""
    if request.user.is_authenticated:  # signed in, but not an operator
        raise PermissionDenied("The operations console is for Tesseract staff.")
    return redirect_to_login(request.GET.get("next", "/admin/"), reverse("accounts:login"))


admin.site.login = _admin_login  # type: ignore[method-assign]

# Under /api/ a missing page or a crash answers in the API's JSON error shape.
handler404 = "billing.api.errors.page_not_found"
handler500 = "billing.api.errors.server_error"

urlpatterns = [
    path("health", dashboard_views.health, name="health"),
    path("admin/", admin.site.urls),
    path("account/", include("accounts.urls")),
    path("", include("accounts.audit_urls")),
    path("", include("billing.urls")),
    path("api/", include("billing.api.urls")),
    path("api/", include("backends.api.clusters")),  # /api/v1/clusters: an org's own
    path("api/v1/operator/", include("backends.api.urls")),
    path("", include("dashboards.urls")),
]
