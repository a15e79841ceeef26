"""Statements for staff: read-only, as they were closed."""

from django.contrib import admin

from billing.models import Statement, StatementLine


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
class StatementAdmin(admin.ModelAdmin):
    list_display = ["number", "user", "cycle_start", "cycle_end", "total", "closed_at"]
    list_filter = ["cycle_start"]
    search_fields = ["number", "user__username", "user__email"]
    list_select_related = ["user"]
    inlines = [LineInline]
    readonly_fields = [f.name for f in Statement._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
