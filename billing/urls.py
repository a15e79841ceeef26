from django.urls import path

from billing import views, webhooks

app_name = "billing"
urlpatterns = [
    path("billing/", views.index, name="index"),
    path("billing/portal/", views.portal, name="portal"),
    path("billing/top-up/", views.top_up, name="top_up"),
    path("billing/stripe/webhook/", webhooks.stripe_webhook, name="stripe_webhook"),
    path("api/billing/", views.api_billing, name="api"),
    path("billing/statements/<str:number>/", views.statement, name="statement"),
]
