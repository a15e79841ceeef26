"""The statements of a chat turn (chat/services.py): a conversation's messages for its
history, the prompt (with a new conversation's row) with the reservation, and the answer
with its settle, each in one round trip. As in usage/sql.py, only table and column names
from the models are written into the SQL; every value is a parameter."""
# ruff: noqa: S608

from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from chat.models import Conversation, Message
from chatusage.db import params

MESSAGE = Message._meta.db_table
CONVERSATION = Conversation._meta.db_table
MESSAGE_FIELDS = [
    "conversation_id",
    "role",
    "content",
    "created_at",
    "generation_id",
    "failed",
    "interrupted",
    "error",
    "finish_reason",
    "demo",
]
CONVERSATION_FIELDS = ["id", "user_id", "title", "created_at", "updated_at"]
INSERT_CONVERSATION = (
    f"INSERT INTO {CONVERSATION} ({', '.join(CONVERSATION_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(CONVERSATION_FIELDS))})"
)
INSERT_MESSAGE = (
    f"INSERT INTO {MESSAGE} ({', '.join(MESSAGE_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(MESSAGE_FIELDS))}) RETURNING id"
)


class Earlier(NamedTuple):
    """A message as earlier() reads it."""

    id: int
    role: str
    content: str
    failed: bool
    generation_id: UUID | str | None  # SQLite answers its text


# Only if the conversation is the user's: the scope is in the statement itself.
EARLIER = (
    f"SELECT m.id, m.role, m.content, m.failed, m.generation_id FROM {MESSAGE} m "
    f"JOIN {CONVERSATION} c ON c.id = m.conversation_id "
    "WHERE m.conversation_id = %s AND c.user_id = %s ORDER BY m.created_at DESC, m.id DESC"
)


def earlier(conversation_id: UUID, user_id: int) -> tuple[str, list]:
    """The messages of the user's conversation, newest first (rows for Earlier)."""
    return EARLIER, params([conversation_id, user_id])


def continued(conversation_id: UUID, user_id: int) -> list:
    """The user's conversation (its title, no row if it is not theirs) and its messages,
    newest first: what a turn in it reads, in one round trip."""
    title = (
        f"SELECT title FROM {CONVERSATION} WHERE id = %s AND user_id = %s",
        params([conversation_id, user_id]),
    )
    return [title, earlier(conversation_id, user_id)]


def save_prompt(prompt: dict) -> tuple[str, list]:
    """Insert a prompt (message_values()); it returns the new row's id."""
    return INSERT_MESSAGE, params([prompt[f] for f in MESSAGE_FIELDS])


def reuse_prompt(prompt_id: int, generation_id: UUID | str | None) -> tuple[str, list]:
    """Point a failed prompt at its retry's generation (or back at its own)."""
    return (
        f"UPDATE {MESSAGE} SET generation_id = %s WHERE id = %s",
        params([generation_id, prompt_id]),
    )


def drop_prompt(generation_id: UUID) -> tuple[str, list]:
    """Take back the prompt save_prompt() inserted for `generation_id`."""
    return (
        f"DELETE FROM {MESSAGE} WHERE generation_id = %s AND role = %s",
        params([generation_id, Message.Role.USER.value]),
    )


def drop_conversation(conversation_id: UUID) -> list:
    """Take back what start_conversation() inserted."""
    return [
        (f"DELETE FROM {MESSAGE} WHERE conversation_id = %s", params([conversation_id])),
        (f"DELETE FROM {CONVERSATION} WHERE id = %s", params([conversation_id])),
    ]


def start_conversation(conversation: Conversation, prompt: dict) -> list:
    """A new conversation and its first prompt (one round trip, in the turn's transaction)."""
    return [
        (
            INSERT_CONVERSATION,
            params([getattr(conversation, f) for f in CONVERSATION_FIELDS]),
        ),
        save_prompt(prompt),
    ]


# The answer, unless this generation has one already (a save run again after a commit whose
# outcome was lost): RETURNING says whether this one made it.
INSERT_ANSWER = (
    f"INSERT INTO {MESSAGE} ({', '.join(MESSAGE_FIELDS)}) "
    f"SELECT {', '.join(['%s'] * len(MESSAGE_FIELDS))} "
    f"WHERE NOT EXISTS (SELECT 1 FROM {MESSAGE} WHERE generation_id = %s AND role = %s) "
    "RETURNING id"
)


def save_answer(answer: dict, prompt_id: int) -> list:
    """Insert the answer, mark its prompt answered, move the conversation to the top."""
    return [
        (
            INSERT_ANSWER,
            params(
                [
                    *(answer[field] for field in MESSAGE_FIELDS),
                    answer["generation_id"],
                    Message.Role.ASSISTANT.value,
                ]
            ),
        ),
        (f"UPDATE {MESSAGE} SET failed = %s WHERE id = %s", params([False, prompt_id])),
        (
            f"UPDATE {CONVERSATION} SET updated_at = %s WHERE id = %s",
            params([answer["created_at"], answer["conversation_id"]]),
        ),
    ]


def message_values(
    conversation_id: UUID,
    role: str,
    content: str,
    created_at: datetime,
    generation_id: UUID,
    *,
    failed: bool = False,
    interrupted: bool = False,
    error: str = "",
    finish_reason: str = "",
    demo: bool = False,
) -> dict:
    """A message's columns (MESSAGE_FIELDS), as the INSERTs above take them."""
    return {
        "conversation_id": conversation_id,
        "role": role,
        "content": content,
        "created_at": created_at,
        "generation_id": generation_id,
        "failed": failed,
        "interrupted": interrupted,
        "error": error,
        "finish_reason": finish_reason,
        "demo": demo,
    }


def saved(pk: int, values: dict) -> Message:
    """The Message of a row an INSERT above just wrote (Django's own from_db: the instance
    knows it is saved)."""
    return Message.from_db(
        "default", ["id", *MESSAGE_FIELDS], [pk, *(values[f] for f in MESSAGE_FIELDS)]
    )
