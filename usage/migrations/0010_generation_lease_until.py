from datetime import timedelta

from django.db import migrations, models

import usage.models


def lease_pending(apps, schema_editor):
    """Pending rows from before leases keep the hold the old rule gave them: the deadline
    and its margin (120 + 60 s by default) from their start."""
    Generation = apps.get_model("usage", "Generation")
    for generation in Generation.objects.filter(status="pending", lease_until__isnull=True):
        generation.lease_until = generation.created_at + timedelta(seconds=180)
        generation.save(update_fields=["lease_until"])


class Migration(migrations.Migration):
    dependencies = [("usage", "0009_alert_thresholds_validated")]

    operations = [
        migrations.AddField(
            model_name="generation",
            name="lease_until",
            field=models.DateTimeField(
                blank=True, null=True, default=usage.models.lease_from_now
            ),
        ),
        migrations.RunPython(lease_pending, migrations.RunPython.noop),
    ]
