import uuid

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=120, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"], name="conversation_user_updated")]

    def __str__(self):
        return self.title or "New conversation"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    # The ledger row of the call that answered (assistant) or last tried to (user).
    generation_id = models.UUIDField(null=True, blank=True)
    # A user prompt whose call failed: kept, shown with a retry button, not sent as history.
    failed = models.BooleanField(default=False)
    # An answer cut short (the client went away, the provider failed or the deadline hit).
    interrupted = models.BooleanField(default=False)
    # Why an answer was cut short by a failure, shown beside what had arrived.
    error = models.CharField(max_length=300, blank=True)
    # The provider's finish_reason: "length" means cut at the max-tokens limit.
    finish_reason = models.CharField(max_length=20, blank=True)
    demo = models.BooleanField(default=False, help_text="Answered by the offline demo model.")

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.role}: {self.content[:40]}"
