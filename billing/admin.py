"""Statements for staff: read-only, as they were closed."""

from decimal import Decimal

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpResponse
from django.urls import reverse
from django.utils.html import format_html

from billing import credits, meters
from billing.models import Correction, CreditGrant, Statement, StatementLine, StripeOutbox
from billing.statements import statements_csv
from usage.admin import ReadOnlyAdmin
from usage.admin import UserAdmin as UsageUserAdmin
from usage.templatetags.money import usd


class LineInline(admin.TabularInline):
    model = StatementLine
    fk_name = "statement"
    extra = 0
    can_delete = False
    fields = ["kind", "description", "messages", "output_tokens", "charge", "adjusts"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Statement)
class StatementAdmin(ReadOnlyAdmin):
    list_display = ["number", "user", "cycle_start", "cycle_end", "total", "closed_at"]
    list_filter = ["cycle_start"]
    search_fields = ["number", "user__username", "user__email"]
    list_select_related = ["user"]
    inlines = [LineInline]
    readonly_fields = [f.name for f in Statement._meta.fields]
    actions = ["export_csv"]

    @admin.action(description="Export selected statements as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        """For accounting: filter by cycle start, select all, export."""
        response = HttpResponse(statements_csv(queryset), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="statements.csv"'
        return response


class AddOnlyAdmin(admin.ModelAdmin):
    """Money staff write down: added with a reason, never edited or deleted (add another)."""

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Correction)
class CorrectionAdmin(AddOnlyAdmin):
    """Credit (negative) or charge (positive) an amount, with a reason: it goes on the user's
    next statement and into their history. Once written it is not edited: add another."""

    list_display = ["user", "amount", "reason", "created_by", "created_at", "statement"]
    list_select_related = ["user", "created_by", "statement"]
    search_fields = ["user__username", "reason"]
    fields = ["user", "amount", "reason"]
    autocomplete_fields = ["user"]

    @transaction.atomic
    def save_model(self, request, obj, form, change):
        obj.created_by = request.user
        super().save_model(request, obj, form, change)
        meters.record_correction(obj)  # metered billing: an invoice item, sent once
        verb = "Credited" if obj.amount < 0 else "Charged"
        self.log_change(request, obj.user, f"{verb} {abs(obj.amount)} USD: {obj.reason}")


@admin.register(StripeOutbox)
class StripeOutboxAdmin(ReadOnlyAdmin):
    """What Stripe has been sent and what it has not: filter on "parked" for the rows Stripe
    refused for good (the error says why); fix the cause, then send them again."""

    list_display = [
        "kind",
        "user",
        "amount",
        "occurred_at",
        "status",
        "attempts",
        "last_error",
        "sent_at",
    ]
    list_filter = ["status", "kind"]
    search_fields = ["user__username", "user__email", "generation_id", "stripe_id"]
    list_select_related = ["user"]
    readonly_fields = [f.name for f in StripeOutbox._meta.fields]
    actions = ["send_again"]

    @admin.action(description="Send the selected parked items again", permissions=["view"])
    def send_again(self, request, queryset):
        count = meters.retry_parked(queryset)
        transaction.on_commit(meters.kick)
        self.message_user(request, f"{count} parked item(s) will be sent again.")


class CreditGrantForm(forms.ModelForm):
    """Staff grant credit (optionally expiring: promotional) or take it back, with a
    reason; the amount is entered positive either way."""

    kind = forms.ChoiceField(
        choices=[
            (CreditGrant.Kind.GRANT, "Grant credit"),
            (CreditGrant.Kind.TAKE_BACK, "Take back credit"),
        ]
    )
    amount = forms.DecimalField(min_value=Decimal("0.01"), max_digits=12, decimal_places=2)
    reason = forms.CharField(max_length=200)

    class Meta:
        model = CreditGrant
        fields = ["user", "kind", "amount", "reason", "expires_on"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("kind") == CreditGrant.Kind.TAKE_BACK and cleaned.get("expires_on"):
            self.add_error("expires_on", "Only granted credit can expire.")
        return cleaned


class ExpiringFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiring"

    def lookups(self, request, model_admin):
        return [("yes", "Expiring (promotional)"), ("no", "Never expires")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(expires_on__isnull=self.value() == "no")
        return queryset


@admin.register(CreditGrant)
class CreditGrantAdmin(AddOnlyAdmin):
    """Prepaid credit in and out. Staff add grants and take-backs here (each written to the
    user's history); top-ups and refunds arrive from Stripe. Nothing is edited once made."""

    form = CreditGrantForm
    list_display = ["user", "kind", "amount", "reason", "expires_on", "created_at", "created_by"]
    list_filter = ["kind", ExpiringFilter, "created_at"]
    list_select_related = ["user", "created_by"]
    search_fields = ["user__username", "user__email", "reason", "stripe_object_id"]
    autocomplete_fields = ["user"]

    @transaction.atomic
    def save_model(self, request, obj, form, change):
        amount = form.cleaned_data["amount"]
        kind = form.cleaned_data["kind"]
        made = credits.grant(
            obj.user,
            amount if kind == CreditGrant.Kind.GRANT else -amount,
            kind,
            form.cleaned_data["reason"],
            expires_on=form.cleaned_data.get("expires_on"),
            created_by=request.user,
        )
        obj.pk, obj._state.adding = made.pk, False
        verb = "Granted" if kind == CreditGrant.Kind.GRANT else "Took back"
        until = f" (expires after {made.expires_on})" if made.expires_on else ""
        self.log_change(request, obj.user, f"{verb} {amount:.2f} USD credit{until}: {made.reason}")


class UserAdmin(UsageUserAdmin):
    """Prepaid: the credit comes first on a user's page."""

    readonly_fields = ["credit", *UsageUserAdmin.readonly_fields]

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and credits.prepaid():
            return (("Credit", {"fields": ["credit"]}), *fieldsets)
        return fieldsets

    @admin.display(description="Balance")
    def credit(self, obj):
        balance = credits.balance_for(obj.pk)
        grants = reverse("admin:billing_creditgrant_changelist") + f"?user__id__exact={obj.pk}"
        add = reverse("admin:billing_creditgrant_add") + f"?user={obj.pk}"
        return format_html(
            "<strong>{}</strong> left, {} held by answers in progress, {} expired. "
            '<a href="{}">Grants</a> · <a href="{}">Grant or take back credit</a>',
            usd(balance.left),
            usd(balance.held),
            usd(balance.expired),
            grants,
            add,
        )


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), UserAdmin)
