"""Statements for staff: read-only, as they were closed."""

from django.contrib import admin
from django.db import transaction
from django.http import HttpResponse

from billing import meters
from billing.models import Correction, Statement, StatementLine, StripeOutbox
from billing.statements import statements_csv
from usage.admin import ReadOnlyAdmin


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


@admin.register(Correction)
class CorrectionAdmin(admin.ModelAdmin):
    """Credit (negative) or charge (positive) an amount, with a reason: it goes on the user's
    next statement and into their history. Once written it is not edited: add another."""

    list_display = ["user", "amount", "reason", "created_by", "created_at", "statement"]
    list_select_related = ["user", "created_by", "statement"]
    search_fields = ["user__username", "reason"]
    fields = ["user", "amount", "reason"]
    autocomplete_fields = ["user"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

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
