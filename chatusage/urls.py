from django.contrib import admin
from django.urls import include, path

from chatusage import views

urlpatterns = [
    path("", include("chat.urls")),
    path("", include("usage.urls")),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/verify/resend/", views.resend_verification, name="resend_verification"),
    path("accounts/verify/<str:token>/", views.verify_email, name="verify_email"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon),
    path("admin/", admin.site.urls),
]

handler404 = "chatusage.views.not_found"
handler500 = "chatusage.views.server_error"
