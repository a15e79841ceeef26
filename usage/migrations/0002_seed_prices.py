from django.db import migrations


def seed_prices(apps, schema_editor):
    from usage.price_table import OPENAI_PRICES

    ModelPrice = apps.get_model("usage", "ModelPrice")
    for model, (input_price, cached_price, output_price) in OPENAI_PRICES.items():
        ModelPrice.objects.get_or_create(
            model=model,
            defaults={
                "input_per_1m": input_price,
                "cached_input_per_1m": cached_price,
                "output_per_1m": output_price,
            },
        )


def create_missing_accounts(apps, schema_editor):
    """Users that existed before the usage app get an account anchored on their join day."""
    User = apps.get_model("auth", "User")
    UsageAccount = apps.get_model("usage", "UsageAccount")
    for user in User.objects.filter(usage_account__isnull=True).iterator():
        UsageAccount.objects.create(user=user, billing_anchor=user.date_joined.date())


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.RunPython(seed_prices, migrations.RunPython.noop),
        migrations.RunPython(create_missing_accounts, migrations.RunPython.noop),
    ]
