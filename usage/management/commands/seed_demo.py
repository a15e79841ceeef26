import random
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from usage.cycles import cycle_containing, local_day
from usage.models import DailyUsage, Generation, ModelPrice, UsageAccount
from usage.pricing import Price, charge_for

# username, staff, budget (None = default), models and weights, messages per day, seed
DEMO_USERS = [
    ("demo", False, None, {"chatusage-demo": 6, "gpt-4o-mini": 3, "gpt-4.1-mini": 1}, 6),
    ("admin", True, None, {"gpt-4o-mini": 1}, 1),
    ("kenji", False, Decimal("1.00"), {"gpt-4o": 3, "gpt-4.1": 1}, 13),
    ("maria", False, Decimal("0.10"), {"gpt-4.1": 1, "o4-mini": 1}, 4),
    ("li", False, Decimal("0"), {"gpt-5-mini": 2, "gpt-5-nano": 3}, 10),
]
HISTORY_DAYS = 60


class Command(BaseCommand):
    help = (
        "Create demo users (password: settings.DEMO_PASSWORD) and 60 days of realistic ledger "
        "history so the dashboard and admin are full on first run. Idempotent; DEBUG only."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--force", action="store_true", help="Run even when DEBUG is off (never in production)."
        )

    def handle(self, *args, force=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError(
                "seed_demo only runs with DEBUG on (or --force): it creates users "
                "with a published password."
            )
        User = get_user_model()
        prices = {p.model: Price.from_row(p) for p in ModelPrice.objects.all()}
        created_users = 0
        created_generations = 0
        now = timezone.now()
        # Anchor cycles so that the current one is three weeks old and two earlier ones are full.
        anchor = cycle_containing(
            local_day(now - timedelta(days=20)).day, local_day(now - timedelta(days=80))
        ).start_date
        for index, (username, staff, budget, models, per_day) in enumerate(DEMO_USERS):
            with transaction.atomic():
                user, created = User.objects.get_or_create(
                    username=username,
                    defaults={
                        "email": f"{username}@example.com",
                        "is_staff": staff,
                        "is_superuser": staff,
                        "date_joined": now - timedelta(days=HISTORY_DAYS + 3),
                    },
                )
                if created:
                    user.set_password(settings.DEMO_PASSWORD)
                    user.save(update_fields=["password"])
                    created_users += 1
                UsageAccount.objects.update_or_create(
                    user=user, defaults={"billing_anchor": anchor, "budget_usd": budget}
                )
                if Generation.objects.filter(user=user).exists():
                    continue
                created_generations += self._history(user, models, per_day, prices, now, index)
        self.stdout.write(
            f"Demo data: {created_users} users created, {created_generations} generations added "
            f"(log in as demo / {settings.DEMO_PASSWORD}, staff: admin / {settings.DEMO_PASSWORD})."
        )

    def _history(self, user, models, per_day, prices, now, seed) -> int:
        rng = random.Random(seed)
        names, weights = zip(*models.items(), strict=True)
        rows = []
        rollups = defaultdict(lambda: defaultdict(int))
        markup = settings.BILLING_MARKUP_PERCENT
        for days_ago in range(HISTORY_DAYS, 0, -1):
            weekday = (now - timedelta(days=days_ago)).weekday()
            count = rng.randint(0, per_day * (1 if weekday >= 5 else 2))
            for _ in range(count):
                model = rng.choices(names, weights)[0]
                price = prices[model]
                at = now - timedelta(days=days_ago, seconds=rng.randint(0, 86399))
                ok = rng.random() > 0.04
                input_tokens = rng.randint(40, 2400) if ok else 0
                cached = (input_tokens // 128) * 128 if ok and input_tokens > 1024 else 0
                output_tokens = rng.randint(30, 500) if ok else 0
                cost = price.cost(input_tokens, cached, output_tokens) if ok else Decimal(0)
                charge = charge_for(cost, markup)
                rows.append(
                    Generation(
                        user=user,
                        model=model,
                        provider="demo" if "demo" in model else "openai",
                        status=Generation.Status.OK if ok else Generation.Status.ERROR,
                        reserved_cost=charge_for(price.cost(input_tokens + 600, 0, 500), markup),
                        input_tokens=input_tokens,
                        cached_input_tokens=cached,
                        output_tokens=output_tokens,
                        cost=cost,
                        charge=charge,
                        markup_percent=markup,
                        latency_ms=rng.randint(300, 4000),
                        http_status=200 if ok else 500,
                        error="" if ok else "provider_error: The model provider failed to answer.",
                        price_input_per_1m=price.input_per_1m,
                        price_cached_input_per_1m=price.cached_input_per_1m,
                        price_output_per_1m=price.output_per_1m,
                        created_at=at,
                        settled_at=at + timedelta(seconds=2),
                    )
                )
                bucket = rollups[(local_day(at), model)]  # the day it was reserved
                bucket["generations"] += int(ok)
                bucket["errors"] += int(not ok)
                bucket["input_tokens"] += input_tokens
                bucket["cached_input_tokens"] += cached
                bucket["output_tokens"] += output_tokens
                bucket["cost"] += cost
                bucket["charge"] += charge
        Generation.objects.bulk_create(rows, batch_size=1000)
        DailyUsage.objects.bulk_create(
            [
                DailyUsage(user=user, day=day, model=model, **values)
                for (day, model), values in rollups.items()
            ],
            batch_size=1000,
        )
        return len(rows)
