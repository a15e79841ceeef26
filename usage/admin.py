"""The admin as a support tool: each user's usage this cycle, limits, generations, prices."""

from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.validators import MinValueValidator
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from usage import alerts, budget, reports
from usage.exports import csv_response
from usage.models import Alert, DailyUsage, Generation, ModelPrice, UsageAccount
from usage.reports import with_cycle_usage
from usage.templatetags.money import usd

User = get_user_model()
RECENT_GENERATIONS = 20
ZONE = settings.USAGE_TIME_ZONE.key  # every time staff read is in the billing zone, labelled


class BudgetFilter(admin.SimpleListFilter):
    title = "budget used this cycle"
    parameter_name = "budget"

    def lookups(self, request, model_admin):
        near = budget.near_from()
        return [
            *([("near", f"Near or over ({near:g}% or more)")] if near is not None else []),
            ("over", f"Over ({budget.OVER:g}% or more)"),
            ("uncapped", "No cap"),
        ]

    def queryset(self, request, queryset):
        near = budget.near_from()
        if self.value() == "near" and near is not None:
            return queryset.filter(budget_pct__gte=near)
        if self.value() == "over":
            return queryset.filter(budget_pct__gte=budget.OVER)
        if self.value() == "uncapped":
            return queryset.filter(budget=0)
        return queryset


class ReadOnlyAdmin(admin.ModelAdmin):
    """Written by the code only (the ledger by reserve() and settle(), statements by
    close_cycles); staff read it."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class UsageAccountInline(admin.StackedInline):
    model = UsageAccount
    can_delete = False
    fields = [
        "budget_usd",
        "message_limit",
        "blocked",
        "billing_anchor",
        "alert_thresholds",
        "email_verified",
        "stripe_customer_id",
    ]
    verbose_name = verbose_name_plural = "Usage limits and billing"

    def has_change_permission(self, request, obj=None):
        # Budgets, pausing and the anchor are money: the same permission as the actions.
        return super().has_change_permission(request, obj) and request.user.has_perm(
            "usage.change_budget"
        )


class BudgetActionForm(ActionForm):
    amount = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_digits=10,
        decimal_places=2,
        label="Amount (USD, for “raise budget by”)",
    )


class UserAdmin(DjangoUserAdmin):
    """A support tool: this cycle's usage and the limits come first on a user's page (the
    template puts the limits inline above the account's fields)."""

    inlines = [UsageAccountInline]
    change_form_template = "admin/auth/user/usage_change_form.html"
    action_form = BudgetActionForm
    actions = ["reset_anchor", "raise_budget", "block", "unblock"]
    list_display = [
        "username",
        "email",
        "joined",
        "messages_this_cycle",
        "charged_this_cycle",
        "cost_this_cycle",
        "margin_this_cycle",
        "budget_display",
        "budget_used",
    ]
    list_filter = [BudgetFilter, "is_staff", "is_active", "date_joined"]
    search_fields = ["username", "email"]
    list_select_related = ["usage_account"]
    # Set by Django, not by staff (and their split date/time inputs had no labels); the
    # plain multiple selects are labelled, where the two-box widget's icons are not.
    readonly_fields = [
        "current_cycle",
        "recent_generations",
        "posthog_person",
        "last_login",
        "date_joined",
    ]
    filter_horizontal = ()
    fieldsets = (
        ("This cycle", {"fields": ["current_cycle", "recent_generations", "posthog_person"]}),
        *DjangoUserAdmin.fieldsets,
    )

    def _accounts(self, queryset):
        return UsageAccount.objects.filter(user__in=queryset.values("pk")).select_related("user")

    def has_change_budget_permission(self, request) -> bool:
        """Money actions: a dedicated permission, never implied by viewing users."""
        return request.user.has_perm("usage.change_budget")

    @admin.action(
        description="Reset this cycle's budget anchor (a new cycle starts today)",
        permissions=["change_budget"],
    )
    def reset_anchor(self, request, queryset):
        today = timezone.localdate(timezone.now(), settings.USAGE_TIME_ZONE)
        restarted = 0
        for account in self._accounts(queryset):
            if account.restart_cycle(today):
                restarted += 1
                self.log_change(
                    request,
                    account.user,
                    f"Cycle restarted on {today:%-d %b %Y}: the one before ends early, earlier "
                    "cycles unchanged.",
                )
        self.message_user(
            request,
            f"A new cycle starts today for {restarted} user(s); their earlier cycles, usage "
            "and statements are unchanged.",
        )

    @admin.action(description="Raise budget by the amount", permissions=["change_budget"])
    def raise_budget(self, request, queryset):
        amount = request.POST.get("amount")  # BudgetActionForm's field beside the action
        try:
            amount = Decimal(amount)
            if amount <= 0:
                raise ValueError
        except (TypeError, ValueError, ArithmeticError):
            self.message_user(request, "Give a positive amount to raise by.", messages.ERROR)
            return
        raised, uncapped = 0, []
        for account in self._accounts(queryset):
            try:
                account.raise_budget(amount)
            except ValueError:
                uncapped.append(account.user.get_username())
                continue
            raised += 1
            self.log_change(
                request,
                account.user,
                f"Budget raised by {usd(amount, 2)} to {usd(account.budget_usd, 2)}.",
            )
        if raised:
            self.message_user(
                request, f"Raised the budget of {raised} user(s) by {usd(amount, 2)}."
            )
        if uncapped:
            self.message_user(
                request,
                f"Left {', '.join(uncapped)} as they were: no cap, so no budget to raise.",
                messages.WARNING,
            )

    def _set_blocked(self, request, queryset, blocked: bool) -> None:
        change = "Blocked: chat paused." if blocked else "Unblocked."
        for account in self._accounts(queryset):
            account.blocked = blocked
            account.save(update_fields=["blocked"])
            self.log_change(request, account.user, change)
        done = "Blocked" if blocked else "Unblocked"
        self.message_user(request, f"{done} {queryset.count()} user(s).")

    @admin.action(
        description="Block: pause chat (every message is refused)", permissions=["change_budget"]
    )
    def block(self, request, queryset):
        self._set_blocked(request, queryset, True)

    @admin.action(description="Unblock", permissions=["change_budget"])
    def unblock(self, request, queryset):
        self._set_blocked(request, queryset, False)

    def get_queryset(self, request):
        return with_cycle_usage(super().get_queryset(request))

    @admin.display(description=f"Joined ({ZONE})", ordering="date_joined")
    def joined(self, obj):
        return timezone.localdate(obj.date_joined, settings.USAGE_TIME_ZONE)

    @admin.display(description="Messages this cycle", ordering="cycle_messages")
    def messages_this_cycle(self, obj):
        return obj.cycle_messages

    @admin.display(description="Charged this cycle", ordering="cycle_charge")
    def charged_this_cycle(self, obj):
        return usd(obj.cycle_charge)

    @admin.display(description="Provider cost", ordering="cycle_cost")
    def cost_this_cycle(self, obj):
        return usd(obj.cycle_cost)

    @admin.display(description="Margin")
    def margin_this_cycle(self, obj):
        return usd(obj.cycle_charge - obj.cycle_cost)

    @admin.display(description="Budget", ordering="budget")
    def budget_display(self, obj):
        return usd(obj.budget, 2) if obj.budget else "no cap"

    @admin.display(description="Used this cycle", ordering="budget_pct")
    def budget_used(self, obj):
        if obj.budget_pct is None:
            return "—"
        pct = Decimal(obj.budget_pct).quantize(Decimal("0.1"))
        colour = {"over": "#c62828", "near": "#e6a700"}.get(budget.state(pct), "inherit")
        return format_html('<span style="color:{}">{}%</span>', colour, pct)

    @admin.display(description="This cycle")
    def current_cycle(self, obj):
        if obj.pk is None:
            return "—"
        report = reports.report_for(obj)
        t = report.totals
        cost = DailyUsage.objects.filter(
            user=obj, day__gte=report.cycle.start_date, day__lt=report.cycle.end_date
        ).aggregate(cost=Sum("cost"), charge=Sum("charge"))
        provider = cost["cost"] or Decimal(0)
        return format_html(
            "{} – {} ({}): {} messages, {} failed, {} tokens ({} cached), {} charged "
            "(provider cost {}, margin {}); budget {} ({} held for calls in flight)",
            report.cycle.start_date,
            report.cycle.end_date,
            report.source,
            t.messages,
            t.errors,
            t.total_tokens,
            t.cached_input_tokens,
            usd(t.cost),
            usd(provider),
            usd((cost["charge"] or Decimal(0)) - provider),
            usd(report.spend.budget, 2) if report.spend.budget else "no cap",
            usd(report.spend.pending_cost),
        )

    @admin.display(description="Last generations")
    def recent_generations(self, obj):
        if obj.pk is None:
            return "—"
        rows = Generation.objects.filter(user=obj).order_by("-created_at")[:RECENT_GENERATIONS]
        link = (
            reverse("admin:usage_generation_changelist")
            + "?"
            + urlencode({"user__id__exact": obj.pk})
        )
        table = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    timezone.localtime(g.created_at, settings.USAGE_TIME_ZONE).strftime(
                        "%Y-%m-%d %H:%M"
                    ),
                    g.model,
                    g.status,
                    f"{g.input_tokens}/{g.output_tokens}",
                    usd(g.cost),
                )
                for g in rows
            ),
        )
        return format_html(
            f"<table><thead><tr><th>When ({ZONE})</th><th>Model</th><th>Status</th><th>In/out</th>"
            '<th>Cost</th></tr></thead><tbody>{}</tbody></table><a href="{}">All generations</a>',
            table,
            link,
        )

    @admin.display(description="PostHog")
    def posthog_person(self, obj):
        if obj.pk is None or not settings.POSTHOG_PROJECT_ID:
            return "PostHog is not configured."
        url = f"{settings.POSTHOG_API_HOST}/project/{settings.POSTHOG_PROJECT_ID}/person/{obj.pk}"
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">Open person {}</a>', url, obj.pk
        )


admin.site.unregister(User)
admin.site.register(User, UserAdmin)


@admin.register(Generation)
class GenerationAdmin(ReadOnlyAdmin):
    list_display = [
        "created",
        "user",
        "model",
        "status",
        "tokens",
        "cost_display",
        "charge_display",
        "cost_estimated",
        "latency",
    ]
    list_filter = ["status", "model", "provider", "cost_estimated"]
    search_fields = ["user__username", "user__email", "=id"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    show_full_result_count = False
    actions = ["export_csv"]

    @admin.display(description=f"Created ({ZONE})", ordering="created_at")
    def created(self, obj):
        return timezone.localtime(obj.created_at, settings.USAGE_TIME_ZONE).strftime(
            "%Y-%m-%d %H:%M:%S"
        )

    @admin.display(description="Tokens in (cached) / out")
    def tokens(self, obj):
        cached = f" ({obj.cached_input_tokens:,})" if obj.cached_input_tokens else ""
        return f"{obj.input_tokens:,}{cached} / {obj.output_tokens:,}"

    @admin.display(description="Cost", ordering="cost")
    def cost_display(self, obj):
        return usd(obj.cost)

    @admin.display(description="Charge", ordering="charge")
    def charge_display(self, obj):
        if obj.markup_percent:
            return f"{usd(obj.charge)} (+{obj.markup_percent.normalize():f}%)"
        return usd(obj.charge)

    @admin.display(description="Latency", ordering="latency_ms")
    def latency(self, obj):
        return f"{obj.latency_ms:,} ms" if obj.latency_ms is not None else "—"

    class Media:
        css = {"all": ["chatusage/admin.css"]}

    @admin.action(description="Export selected generations as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        # The download is the answer: a message here would only show on the next page.
        return csv_response(
            request.user, queryset, settings.USAGE_TIME_ZONE, "generations.csv", staff=True
        )


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "input_per_1m",
        "cached_input_per_1m",
        "output_per_1m",
        "active",
        "updated_at",
    ]
    list_editable = ["active"]
    list_filter = ["active"]
    search_fields = ["model"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name.endswith("_per_1m"):
            field.validators.append(MinValueValidator(0, "Prices cannot be negative."))
            field.help_text = "USD per 1M tokens."
        return field


@admin.register(DailyUsage)
class DailyUsageAdmin(ReadOnlyAdmin):
    list_display = [
        "day",
        "user",
        "model",
        "generations",
        "errors",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "cost",
    ]
    list_filter = ["model"]
    search_fields = ["user__username", "user__email"]
    date_hierarchy = "day"
    list_select_related = ["user"]


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    """The alert outbox: what was raised, what each channel took, and a way to send again."""

    list_display = [
        "created",
        "user",
        "kind",
        "threshold",
        "spent_display",
        "delivery",
        "attempts",
        "last_error",
    ]
    list_filter = ["kind", ("delivered_at", admin.EmptyFieldListFilter)]
    search_fields = ["user__username", "user__email", "=id"]
    list_select_related = ["user"]
    readonly_fields = [f.name for f in Alert._meta.fields]
    actions = ["send_again"]

    def has_add_permission(self, request):
        return False

    @admin.display(description=f"Created ({ZONE})", ordering="created_at")
    def created(self, obj):
        return timezone.localtime(obj.created_at, settings.USAGE_TIME_ZONE).strftime(
            "%Y-%m-%d %H:%M"
        )

    @admin.display(description="Spent", ordering="spent")
    def spent_display(self, obj):
        return usd(obj.spent)

    @admin.display(description="Delivered")
    def delivery(self, obj):
        if obj.delivered_at:
            return "yes"
        return f"no, next try {timezone.localtime(obj.next_attempt_at):%H:%M}"

    @admin.action(description="Send again (mail and webhook)", permissions=["change"])
    def send_again(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        Alert.objects.filter(pk__in=ids).update(
            delivered_at=None,
            email_sent_at=None,
            webhook_sent_at=None,
            next_attempt_at=timezone.now(),
        )
        delivered, failed = alerts.deliver_due(Alert.objects.filter(pk__in=ids))
        self.message_user(request, f"Sent {delivered} alert(s) again; {failed} failed.")
