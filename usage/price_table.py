"""OpenAI's published standard-tier prices, USD per 1M tokens (input, cached input, output).

Seeded into ModelPrice by a data migration; staff edit them in admin from then on.
gpt-3.5-turbo has no cache discount, so its cached price equals its input price.
The offline demo model is priced like gpt-4o-mini so the dashboard shows real-looking costs.
"""

from decimal import Decimal as D

OPENAI_PRICES = {
    "gpt-4o-mini": (D("0.15"), D("0.075"), D("0.60")),
    "gpt-4o": (D("2.50"), D("1.25"), D("10.00")),
    "gpt-4.1": (D("2.00"), D("0.50"), D("8.00")),
    "gpt-4.1-mini": (D("0.40"), D("0.10"), D("1.60")),
    "gpt-4.1-nano": (D("0.10"), D("0.025"), D("0.40")),
    "gpt-5": (D("1.25"), D("0.125"), D("10.00")),
    "gpt-5-mini": (D("0.25"), D("0.025"), D("2.00")),
    "gpt-5-nano": (D("0.05"), D("0.005"), D("0.40")),
    "o3": (D("2.00"), D("0.50"), D("8.00")),
    "o4-mini": (D("1.10"), D("0.275"), D("4.40")),
    "gpt-3.5-turbo": (D("0.50"), D("0.50"), D("1.50")),
    "chatusage-demo": (D("0.15"), D("0.075"), D("0.60")),
}
