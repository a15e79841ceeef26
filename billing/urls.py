from django.urls import path

from billing import views

app_name = "billing"
urlpatterns = [
    path("billing/", views.index, name="index"),
    path("billing/portal/", views.portal, name="portal"),
    path("billing/statements/<str:number>/", views.statement, name="statement"),
]
