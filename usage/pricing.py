"""Prices and cost, in Decimal USD.

OpenAI counts cached input tokens inside the input tokens (inclusive), so the
cost of a call is (input - cached) x input price + cached x cached price +
output x output price. PostHog applies the same rule to the per-token prices
we send with every event, which is what keeps its cost equal to the ledger's.
"""

import time
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from usage.models import ModelPrice

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.0000000001")  # the ledger's 10 decimal places
CHARGE_QUANTUM = Decimal("0.000001")  # a charge is rounded half-up to 6 decimal places


def usd_text(amount) -> str:
    """An amount of USD as the JSON endpoints, webhooks and statements write it: a string of
    6 decimal places (micro-dollars), exact, never a float."""
    return str(Decimal(amount).quantize(CHARGE_QUANTUM))


def charge_for(cost: Decimal, markup_percent: Decimal) -> Decimal:
    """What the user is charged for `cost`: with the markup, rounded half-up to 6 places."""
    return (cost * (1 + markup_percent / 100)).quantize(CHARGE_QUANTUM, ROUND_HALF_UP)


class UnknownModelError(Exception):
    """No active price for a model: refused, never recorded as $0."""

    def __init__(self, model: str):
        self.model = model
        super().__init__(
            f"The model {model!r} has no price in the price table, so its cost cannot be "
            "recorded. A staff member can add it under Admin > Model prices."
        )


@dataclass(frozen=True)
class TokenUsage:
    """What a call used, as the provider reported it (or estimated, flagged)."""

    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    estimated: bool = False


@dataclass(frozen=True)
class Price:
    model: str
    input_per_1m: Decimal
    cached_input_per_1m: Decimal
    output_per_1m: Decimal

    @classmethod
    def from_row(cls, row: ModelPrice) -> "Price":
        return cls(row.model, row.input_per_1m, row.cached_input_per_1m, row.output_per_1m)

    def cost(self, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> Decimal:
        cached = min(cached_input_tokens, input_tokens)
        total = (
            (input_tokens - cached) * self.input_per_1m
            + cached * self.cached_input_per_1m
            + output_tokens * self.output_per_1m
        ) / MILLION
        return total.quantize(COST_QUANTUM)

    def posthog_properties(self) -> dict[str, float]:
        """Per-ONE-token prices, under the names PostHog's ingestion reads to price an event:
        sent with both the input and output price, they override its own price list, so
        PostHog's $ai_total_cost_usd equals the ledger's cost (cached input tokens are part
        of $ai_input_tokens and priced at the cache price).
        https://posthog.com/docs/llm-analytics/calculating-costs"""
        return {
            "$ai_input_token_price": float(self.input_per_1m / MILLION),
            "$ai_output_token_price": float(self.output_per_1m / MILLION),
            "$ai_cache_read_token_price": float(self.cached_input_per_1m / MILLION),
        }


PRICE_CACHE_SECONDS = 60
_cache: dict[str, tuple[float, Price | None]] = {}


def price_for(model: str) -> Price:
    """The active price of `model`, cached per process for a minute.

    Every chat message needs it; an edit in admin clears this process's cache at once and
    reaches other processes within PRICE_CACHE_SECONDS.
    """
    now = time.monotonic()
    hit = _cache.get(model)
    if hit is None or now - hit[0] > PRICE_CACHE_SECONDS:
        row = ModelPrice.objects.filter(model=model, active=True).first()
        hit = _cache[model] = (now, Price.from_row(row) if row else None)
    if hit[1] is None:
        raise UnknownModelError(model)
    return hit[1]


@receiver([post_save, post_delete], sender=ModelPrice)
def clear_cache(**kwargs) -> None:
    _cache.clear()
