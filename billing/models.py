"""Statements: the bill of one closed cycle, frozen. Nothing changes one once it is closed;
what arrives for its cycle later goes on the next statement as an adjustment."""

from decimal import Decimal

from django.conf import settings
from django.db import models

MONEY = {"max_digits": 20, "decimal_places": 10}


class ClosedStatement(Exception):
    """A statement was about to be changed: closed statements never change."""


class Frozen(models.Model):
    """A model whose rows are written once and never updated or deleted from code."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ClosedStatement(f"{self} is closed: it cannot change.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ClosedStatement(f"{self} is closed: it cannot be deleted.")


class StatementCounter(models.Model):
    """The last statement number given out: locked while a statement is numbered, so numbers
    are sequential for the deployment, without gaps or repeats."""

    name = models.CharField(max_length=20, primary_key=True)
    last = models.PositiveBigIntegerField(default=0)

    def __str__(self):
        return f"{self.name}: {self.last}"


class Statement(Frozen):
    number = models.CharField(max_length=32, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="statements"
    )
    cycle_start = models.DateField()  # the cycle's dates in the billing zone, [start, end)
    cycle_end = models.DateField()
    time_zone = models.CharField(max_length=64)
    usage_total = models.DecimalField(**MONEY)  # the cycle's charges when it was closed
    adjustments_total = models.DecimalField(**MONEY, default=Decimal(0))
    total = models.DecimalField(**MONEY)
    closed_at = models.DateTimeField()

    class Meta:
        ordering = ["-cycle_start"]
        constraints = [
            models.UniqueConstraint(fields=["user", "cycle_start"], name="statement_once")
        ]

    def __str__(self):
        return f"Statement {self.number}"

    def get_absolute_url(self):
        from django.urls import reverse

        return reverse("billing:statement", args=[self.number])

    @property
    def last_day(self):
        """The cycle's last day (cycle_end is the first day of the next one)."""
        from datetime import timedelta

        return self.cycle_end - timedelta(days=1)


class StatementLine(Frozen):
    class Kind(models.TextChoices):
        USAGE = "usage"
        ADJUSTMENT = "adjustment"

    statement = models.ForeignKey(Statement, on_delete=models.PROTECT, related_name="lines")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    description = models.CharField(max_length=200)
    model = models.CharField(max_length=100, blank=True)
    messages = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    charge = models.DecimalField(**MONEY)
    # An adjustment for usage recorded late: the statement of the cycle it belongs to.
    adjusts = models.ForeignKey(
        Statement, null=True, blank=True, on_delete=models.PROTECT, related_name="adjusted_by"
    )

    class Meta:
        ordering = ["kind", "model", "id"]

    def __str__(self):
        return f"{self.description}: {self.charge}"


class Correction(models.Model):
    """A staff credit (negative) or charge (positive) with its reason: it goes on the user's
    next statement as an adjustment line, and into the user's admin history."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="billing_corrections"
    )
    amount = models.DecimalField(**MONEY)
    reason = models.CharField(max_length=200)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The statement it went on; empty until the next statement closes.
    statement = models.ForeignKey(
        Statement, null=True, blank=True, on_delete=models.PROTECT, related_name="corrections"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.amount} for {self.user_id}: {self.reason}"


class StripeOutbox(models.Model):
    """What Stripe must hear about once: a settled answer's charge (a meter event, written
    in the settle's own transaction) or a staff correction (an invoice item). Delivered
    after commit and by `manage.py send_meter_events`; what Stripe refuses for good is
    parked for staff, never dropped."""

    class Kind(models.TextChoices):
        METER_EVENT = "meter_event", "meter event"
        INVOICE_ITEM = "invoice_item", "invoice item"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        PARKED = "parked"

    kind = models.CharField(max_length=12, choices=Kind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="stripe_outbox"
    )
    # One row per settled generation (the settle's INSERT ... ON CONFLICT relies on it).
    generation_id = models.UUIDField(unique=True, null=True, blank=True)
    correction = models.OneToOneField(
        Correction, null=True, blank=True, on_delete=models.PROTECT, related_name="stripe_item"
    )
    amount = models.DecimalField(**MONEY)  # USD: the charge, or the correction
    occurred_at = models.DateTimeField()  # a meter event's timestamp: when it settled
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    stripe_id = models.CharField(max_length=255, blank=True)  # an invoice item's id
    created_at = models.DateTimeField()

    class Meta:
        verbose_name = "Stripe outbox item"
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="stripe_outbox_due",
                condition=models.Q(status="pending"),
            )
        ]

    def __str__(self):
        return f"{self.get_kind_display()} {self.identifier}"

    @property
    def identifier(self) -> str:
        """Stripe's identifier and Idempotency-Key for this item: stable across retries."""
        if self.generation_id:
            return str(self.generation_id)
        return f"chatusage-correction-{self.correction_id}"


class CreditGrant(models.Model):
    """Prepaid credit in (a paid top-up, a staff or sign-up grant) or out (a refund, staff
    taking credit back): the balance is their sum less the charges since the first one.
    Written once; a Stripe object (a Checkout Session, a refund) is applied once at most."""

    class Kind(models.TextChoices):
        PURCHASE = "purchase", "top-up"
        GRANT = "grant", "granted by staff"
        SIGNUP = "signup", "sign-up credit"
        REFUND = "refund", "refunded top-up"
        TAKE_BACK = "take_back", "taken back by staff"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="credit_grants"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    amount = models.DecimalField(**MONEY)  # USD; negative for refunds and take-backs
    reason = models.CharField(max_length=200, blank=True)
    # Promotional credit: spendable through this local day (the billing zone's), then the
    # rest expires. Empty: never (paid credit never expires).
    expires_on = models.DateField(null=True, blank=True)
    created_on = models.DateField()  # the local day it was granted: spending counts from it
    created_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    # The Checkout Session or refund it applies: unique, so a webhook replayed or retried,
    # even 20 times at once, grants once.
    stripe_object_id = models.CharField(max_length=255, unique=True, null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_on__isnull=True) | models.Q(amount__gt=0),
                name="only_credit_in_expires",
            )
        ]

    def __str__(self):
        return f"{self.get_kind_display()}: {self.amount} USD for {self.user_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ClosedStatement(f"{self} is recorded: add another grant instead.")
        super().save(*args, **kwargs)
