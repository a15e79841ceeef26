"""The sign-in backend: Django's ModelBackend, with the signed-in user's row read by one
plain statement.

Every request of a signed-in user loads its user (`get_user`). ModelBackend does that with
the ORM, which builds the query each time: 215 µs of CPU a load on PostgreSQL (144 on
SQLite), against 102 µs (24) for the same SELECT sent as it is (README, "the start of a
turn"). The row, the checks (an inactive user is nobody) and everything else are
ModelBackend's.

Sessions signed in before this backend name Django's ModelBackend, which settings still
list after this one so that they stay signed in. A failed sign-in stops here
(PermissionDenied, after the one password hash ModelBackend does), so that backend never
hashes the same password a second time.
"""

from functools import cache

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.db import DEFAULT_DB_ALIAS, connection

from chatusage.db import batch, params


class UserBackend(ModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        user = super().authenticate(request, username, password, **kwargs)
        if user is None and password is not None:
            raise PermissionDenied  # Django then sends user_login_failed, as for a None
        return user

    def get_user(self, user_id):
        user = user_row(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None

    async def aget_user(self, user_id):  # ModelBackend's own goes through the ORM
        return await sync_to_async(self.get_user)(user_id)


@cache
def _select() -> tuple[str, list[str], list[tuple[int, object, list]]]:
    """The user table's SELECT by primary key, its fields' attribute names, and the database
    converters of the columns that have any (SQLite's datetimes and booleans), as the ORM
    applies them."""
    model = get_user_model()
    fields = model._meta.concrete_fields
    quote = connection.ops.quote_name
    sql = "SELECT {} FROM {} WHERE {} = %s".format(  # noqa: S608 (names from the model)
        ", ".join(quote(field.column) for field in fields),
        quote(model._meta.db_table),
        quote(model._meta.pk.column),
    )
    converters = []
    for index, field in enumerate(fields):
        column = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        if found:
            converters.append((index, column, found))
    return sql, [field.attname for field in fields], converters


def user_row(user_id):
    """The user with primary key `user_id`, as `User.objects.get(pk=user_id)` returns it,
    or None."""
    sql, names, converters = _select()
    (rows,) = batch((sql, params([user_id])))
    if not rows:
        return None
    values = list(rows[0])
    for index, column, found in converters:
        for converter in found:
            values[index] = converter(values[index], column, connection)
    return get_user_model().from_db(DEFAULT_DB_ALIAS, names, values)
