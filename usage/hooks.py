"""Hooks usage offers the apps built on it (usage never imports them): they register here
when they load (their AppConfig.ready)."""

# Called by `manage.py reconcile_usage` after its own comparison; each returns lines that
# describe a difference (an empty list when all agree). Billing checks its statements.
reconcile_checks: list = []
