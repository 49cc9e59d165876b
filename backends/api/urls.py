from django.urls import path

from backends.api import views

app_name = "operator"

urlpatterns = [
    path("providers", views.ProviderListView.as_view(), name="providers"),
    path("providers/<slug:slug>", views.ProviderDetailView.as_view(), name="provider"),
    path("presets", views.PresetListView.as_view(), name="presets"),
]
