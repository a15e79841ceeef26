from django.contrib import admin
from django.urls import include, path

from chatusage import views

urlpatterns = [
    path("", include("chat.urls")),
    path("", include("usage.urls")),
    path("", include("billing.urls")),
    path("", include("accounts.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon),
    path("admin/", admin.site.urls),
]

handler404 = "chatusage.views.not_found"
handler500 = "chatusage.views.server_error"
