from django.urls import path

from billing import views

app_name = "billing"
urlpatterns = [
    path("billing/", views.index, name="index"),
    path("billing/statements/<str:number>/", views.statement, name="statement"),
]
