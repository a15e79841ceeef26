"""The usage ledger: what every generation cost, per user, in Decimal USD."""

import uuid
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from usage.budget import validate_thresholds

MONEY = {"max_digits": 20, "decimal_places": 10}
PRICE = {"max_digits": 12, "decimal_places": 6}


class ModelPrice(models.Model):
    """USD per 1M tokens, as OpenAI publishes them. Editable in admin."""

    model = models.CharField(max_length=100, unique=True)
    input_per_1m = models.DecimalField(**PRICE)
    cached_input_per_1m = models.DecimalField(**PRICE)
    output_per_1m = models.DecimalField(**PRICE)
    active = models.BooleanField(default=True, help_text="Inactive models are refused.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]
        constraints = [
            models.CheckConstraint(
                condition=Q(input_per_1m__gte=0)
                & Q(cached_input_per_1m__gte=0)
                & Q(output_per_1m__gte=0),
                name="modelprice_non_negative",
            )
        ]

    def __str__(self):
        return self.model


class UsageAccountManager(models.Manager):
    def for_user(self, user) -> "UsageAccount":
        """The user's account, created (anchored on the day they joined) if missing."""
        from usage.cycles import local_day

        account, _ = self.get_or_create(
            user=user, defaults={"billing_anchor": local_day(user.date_joined)}
        )
        return account


class UsageAccount(models.Model):
    """Per-user limits and the billing anchor. Created with the user."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_account"
    )
    billing_anchor = models.DateField(
        help_text="Cycles start on this day of each month (the last day when a month is shorter)."
    )
    budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Per cycle. Empty: the default from settings. 0: no cap.",
    )
    message_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Per cycle. Empty: the default from settings. 0: no cap."
    )
    alert_thresholds = models.CharField(
        max_length=100,
        blank=True,
        # settle() reads this on the chat path: a malformed value must never get stored.
        validators=[validate_thresholds],
        help_text="Percent of the budget, comma-separated (50,80). Empty: the default from "
        "settings (USAGE_ALERT_THRESHOLDS).",
    )
    blocked = models.BooleanField(
        default=False, help_text="Staff paused this account's chat: every message is refused."
    )
    email_verified = models.BooleanField(
        default=True,
        help_text="A sign-up whose address is not yet confirmed has no budget (it cannot chat).",
    )
    stripe_customer_id = models.CharField(
        max_length=255,
        blank=True,
        help_text="Stripe's customer (cus_...): created on first need when Stripe billing is "
        "on, or pasted here.",
    )

    objects = UsageAccountManager()

    class Meta:
        permissions = [
            (
                "change_budget",
                "Can change a user's budget and limits, pause their chat or restart their cycle",
            )
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(budget_usd__isnull=True) | Q(budget_usd__gte=0),
                name="usageaccount_budget_non_negative",
            )
        ]

    def __str__(self):
        return f"Usage account of {self.user}"

    def restart_cycle(self, today: date) -> bool:
        """Staff's restart: the current cycle ends early today and a new one starts; the
        cycles before keep their bounds (a PastAnchor remembers them). False when a cycle
        already starts today."""
        from django.db import transaction

        if self.billing_anchor == today:
            return False
        with transaction.atomic():
            PastAnchor.objects.create(
                user_id=self.user_id, anchor=self.billing_anchor, ended_on=today
            )
            self.billing_anchor = today
            self.save(update_fields=["billing_anchor"])
        return True

    @property
    def effective_budget(self) -> Decimal:
        if self.budget_usd is None:
            return settings.USAGE_DEFAULT_BUDGET_USD
        return self.budget_usd

    def raise_budget(self, amount: Decimal) -> None:
        """Add `amount` to this cycle's budget. An account with no cap (budget 0) keeps none:
        raising "unlimited" must not turn it into a cap of `amount`."""
        if amount <= 0:
            raise ValueError("Raise a budget by a positive amount.")
        if not self.effective_budget:
            raise ValueError("This account has no cap: there is no budget to raise.")
        self.budget_usd = self.effective_budget + amount
        self.save(update_fields=["budget_usd"])

    @property
    def effective_message_limit(self) -> int:
        if self.message_limit is None:
            return settings.USAGE_DEFAULT_MESSAGE_LIMIT
        return self.message_limit


def lease_from_now():
    """A new reservation's lease: see settings.RESERVATION_LEASE_SECONDS."""
    from datetime import timedelta

    return timezone.now() + timedelta(seconds=settings.RESERVATION_LEASE_SECONDS)


class Generation(models.Model):
    """One LLM call. Its id is sent to PostHog as the property generation_id."""

    class Status(models.TextChoices):
        PENDING = "pending"
        OK = "ok"
        ERROR = "error"
        ABANDONED = "abandoned"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generations"
    )
    # A reference, not a foreign key: usage never imports chat.
    conversation_id = models.UUIDField(null=True, blank=True, db_index=True)
    model = models.CharField(max_length=100)
    provider = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # The worst case held against the user's budget while the call runs: their charge.
    reserved_cost = models.DecimalField(**MONEY, default=Decimal(0))
    # BILLING_MARKUP_PERCENT when the call was reserved: its charge is cost x (1 + this/100).
    markup_percent = models.DecimalField(
        max_digits=9, decimal_places=4, default=Decimal(0), db_default=Decimal(0)
    )
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))  # what the provider charges
    # What the user is charged: cost with the markup, rounded half-up to 6 decimals.
    charge = models.DecimalField(**MONEY, default=Decimal(0), db_default=Decimal(0))
    cost_estimated = models.BooleanField(
        default=False, help_text="The provider reported no usage; tokens were estimated."
    )
    exceeded_reservation = models.BooleanField(
        default=False,
        db_default=False,  # rows written by raw SQL (settle, bulk loads) need no value
        help_text="The provider reported more than the worst case that was reserved.",
    )
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    # The prices this generation was charged at (USD per 1M tokens).
    price_input_per_1m = models.DecimalField(**PRICE)
    price_cached_input_per_1m = models.DecimalField(**PRICE)
    price_output_per_1m = models.DecimalField(**PRICE)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # While pending, the call holds its worst case until this time; the turn renews it as
    # long as it runs (usage.limits.renew_lease), so only a dead turn's hold ever lapses.
    lease_until = models.DateTimeField(null=True, blank=True, default=lease_from_now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"], name="generation_user_created"),
            models.Index(fields=["status", "created_at"], name="generation_status_created"),
            # reserve() sums a user's calls in flight on every message: keep that lookup tiny.
            models.Index(
                fields=["user"], condition=Q(status="pending"), name="generation_user_pending"
            ),
        ]

    def __str__(self):
        return f"{self.model} for {self.user.get_username()} ({self.status})"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Backfill(models.Model):
    """A generation reconcile_usage sent to PostHog itself. Claimed (this row written) before
    the event goes, so two runs inside PostHog's ingestion lag never send it twice."""

    generation = models.OneToOneField(
        Generation, on_delete=models.CASCADE, primary_key=True, related_name="backfill"
    )
    sent_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"Backfill of {self.generation_id} at {self.sent_at:%Y-%m-%d %H:%M}"


class DailyUsage(models.Model):
    """Settled generations rolled up per user, day (in USAGE_TIME_ZONE) and model."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="daily_usage"
    )
    day = models.DateField()
    model = models.CharField(max_length=100)
    generations = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))
    charge = models.DecimalField(**MONEY, default=Decimal(0), db_default=Decimal(0))

    class Meta:
        ordering = ["day", "model"]
        constraints = [
            models.UniqueConstraint(fields=["user", "day", "model"], name="dailyusage_unique_day")
        ]

    def __str__(self):
        return f"{self.user_id} {self.day} {self.model}"


class PastAnchor(models.Model):
    """An anchor an account had before staff restarted its cycle: its cycles ran from
    `anchor` until `ended_on`, when the restart ended the last of them early. Past cycles
    never change: they keep their bounds, their usage and their statements."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="past_anchors"
    )
    anchor = models.DateField()
    ended_on = models.DateField()  # the restart's day: the first day of the next anchor

    class Meta:
        ordering = ["anchor"]
        constraints = [
            models.UniqueConstraint(fields=["user", "anchor"], name="past_anchor_once"),
            models.CheckConstraint(
                condition=models.Q(anchor__lt=models.F("ended_on")), name="past_anchor_ends"
            ),
        ]

    def __str__(self):
        return f"{self.user_id}: {self.anchor} to {self.ended_on}"


class Alert(models.Model):
    """One budget alert: written in the transaction that settled or refused, then delivered.

    The outbox of the alert channels: delivery happens after commit and is retried by
    `manage.py send_alerts` until every configured channel took it. Its id is the event id
    receivers use to drop duplicates.
    """

    class Kind(models.TextChoices):
        THRESHOLD = "usage.threshold_crossed", "Threshold crossed"
        LIMIT = "usage.limit_reached", "Limit reached"
        OVER_AMOUNT = "usage.user_over_amount", "User over the staff amount"
        # Prepaid: the credit balance fell below BILLING_LOW_BALANCE_USD (spent: the balance,
        # budget: that line, threshold: the top-up it follows, so once per top-up).
        LOW_BALANCE = "credits.low_balance", "Low credit balance"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_alerts"
    )
    kind = models.CharField(max_length=40, choices=Kind.choices)
    # Percent of the budget (threshold), the staff amount in USD (over amount), 0 (limit).
    threshold = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal(0))
    # For a limit reached: which one ("budget" or "messages"), so the mail can say.
    refused_for = models.CharField(max_length=20, blank=True, db_default="")
    cycle_start = models.DateField()
    cycle_end = models.DateField()
    spent = models.DecimalField(**MONEY)
    budget = models.DecimalField(max_digits=12, decimal_places=2)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    dismissed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Exactly once per user, cycle, kind and threshold: the database decides.
            models.UniqueConstraint(
                fields=["user", "cycle_start", "kind", "threshold"], name="alert_once"
            )
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(delivered_at__isnull=True),
                name="alert_undelivered",
            )
        ]

    def __str__(self):
        return f"{self.kind} {self.threshold} for {self.user_id} ({self.cycle_start})"
