from django.urls import path

from usage import views

app_name = "usage"
urlpatterns = [
    path("usage/", views.dashboard, name="dashboard"),
    path("usage/refresh/", views.refresh, name="refresh"),
    path("usage/export.csv", views.export_csv, name="export"),
    path("api/usage/", views.api_usage, name="api"),
    path("usage/alerts/<uuid:alert_id>/dismiss/", views.dismiss_alert, name="dismiss_alert"),
]
