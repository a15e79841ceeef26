from decimal import Decimal

import pytest

from usage.models import ModelPrice
from usage.price_table import OPENAI_PRICES
from usage.pricing import Price, UnknownModelError, price_for

pytestmark = pytest.mark.django_db


def test_the_price_table_is_seeded_with_openai_prices():
    assert set(OPENAI_PRICES) <= set(ModelPrice.objects.values_list("model", flat=True))
    mini = price_for("gpt-4o-mini")
    assert (mini.input_per_1m, mini.cached_input_per_1m, mini.output_per_1m) == (
        Decimal("0.15"),
        Decimal("0.075"),
        Decimal("0.60"),
    )


def test_cost_counts_cached_tokens_inside_input_tokens():
    # 10,000 input of which 4,000 cached, 1,000 output at gpt-4o-mini prices:
    # 6,000 x 0.15 + 4,000 x 0.075 + 1,000 x 0.60 per 1M = 0.0009 + 0.0003 + 0.0006
    assert price_for("gpt-4o-mini").cost(10_000, 4_000, 1_000) == Decimal("0.0018")


def test_cost_is_exact_decimal_for_tiny_prices():
    assert price_for("gpt-5-nano").cost(1, 1, 0) == Decimal("0.000000005")
    assert price_for("gpt-5-nano").cost(3, 0, 1) == Decimal("0.00000055")


def test_an_unknown_model_is_refused_not_priced_at_zero():
    with pytest.raises(UnknownModelError, match="no price"):
        price_for("gpt-unknown").cost(100, 0, 100)


def test_an_inactive_model_is_refused():
    ModelPrice.objects.filter(model="gpt-4o").update(active=False)
    with pytest.raises(UnknownModelError):
        price_for("gpt-4o")


def test_a_price_of_zero_set_on_purpose_is_allowed():
    ModelPrice.objects.create(
        model="local-llama", input_per_1m=0, cached_input_per_1m=0, output_per_1m=0
    )
    assert price_for("local-llama").cost(5000, 0, 5000) == Decimal(0)


def test_posthog_gets_per_token_prices_that_reproduce_the_ledger_cost():
    price = price_for("gpt-4.1")
    props = price.posthog_properties()
    assert props == {
        "$ai_input_token_price": 2e-06,
        "$ai_output_token_price": 8e-06,
        "$ai_cache_read_token_price": 5e-07,
    }
    # PostHog: (input - cached) x input price + cached x cache price + output x output price
    posthog_cost = (
        (5000 - 2048) * props["$ai_input_token_price"]
        + 2048 * props["$ai_cache_read_token_price"]
        + 700 * props["$ai_output_token_price"]
    )
    assert Decimal(str(round(posthog_cost, 10))) == price.cost(5000, 2048, 700)


def test_cached_tokens_never_exceed_input_tokens():
    price = Price("m", Decimal(1), Decimal(0), Decimal(1))
    assert price.cost(100, 500, 0) == Decimal("0.0000")
