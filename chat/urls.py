from django.urls import path

from chat import views

app_name = "chat"
urlpatterns = [
    path("", views.index, name="home"),
    path("chat/", views.index, name="index"),
    path("chat/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("chat/<uuid:conversation_id>/rename/", views.rename, name="rename"),
    path("chat/<uuid:conversation_id>/delete/", views.delete, name="delete"),
    path("api/chat/", views.api_chat, name="api"),
]
