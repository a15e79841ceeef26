"""The statements that save a new conversation's first prompt, and an answer with its
settle, each in one round trip (chat/services.py). As in usage/sql.py, only table and column names
from the models are written into the SQL; every value is a parameter."""
# ruff: noqa: S608

from datetime import datetime
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


def start_conversation(conversation: Conversation, prompt: dict) -> list:
    """A new conversation and its first prompt (one round trip, in the turn's transaction)."""
    return [
        (
            INSERT_CONVERSATION,
            params([getattr(conversation, f) for f in CONVERSATION_FIELDS]),
        ),
        (INSERT_MESSAGE, params([prompt[f] for f in MESSAGE_FIELDS])),
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
