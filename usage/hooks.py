"""Hooks usage offers the apps built on it (usage never imports them): they register here
when they load (their AppConfig.ready)."""

# Called by `manage.py reconcile_usage` after its own comparison; each returns lines that
# describe a difference (an empty list when all agree). Billing checks its statements.
reconcile_checks: list = []

# Outboxes written in settle()'s own transaction (usage/limits.py), so what they record
# commits with the ledger row or not at all. Each has statements(fields): INSERT ... SELECT
# ... FROM settled statements, with named parameters of their own, that record what they
# need of `settled` (usage/sql.py's SETTLED: the row as the settle left it); an empty list
# when it has nothing to write. On PostgreSQL they become part of the settle's one
# statement. And committed(): called after that transaction committed. Billing's
# meter-event outbox is one.
settle_outboxes: list = []

# Limits beside the budget, checked in reserve()'s locked transaction (usage/limits.py).
# Each has statements(user_id): reads to run after the account is locked (an empty list
# when it does not apply), and refusal(rows, spend, worst_case, now): the exception that
# refuses the call (a UsageLimitReached), or None. Billing's prepaid credit is one.
reserve_limits: list = []

# Called once a settle that won has committed, with (user_id, fields): what other apps do
# after a charge lands (billing's low-balance alert). Off the ledger's transaction.
after_settle: list = []
