"""The statements that save an answer, sent with its settle in one round trip
(AnswerRecord.save, chat/services.py). As in usage/sql.py, only table and column names
from the models are written into the SQL; every value is a parameter."""
# ruff: noqa: S608

from datetime import datetime
from uuid import UUID

from chat.models import Conversation, Message
from usage import sql

MESSAGE = Message._meta.db_table
CONVERSATION = Conversation._meta.db_table
ANSWER_FIELDS = [
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
    f"INSERT INTO {MESSAGE} ({', '.join(ANSWER_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(ANSWER_FIELDS))}) RETURNING id"
)


def start_conversation(conversation: Conversation, prompt: dict) -> list:
    """A new conversation and its first prompt (one round trip, in the turn's transaction)."""
    return [
        (
            INSERT_CONVERSATION,
            sql.params([getattr(conversation, f) for f in CONVERSATION_FIELDS]),
        ),
        (INSERT_MESSAGE, sql.params([prompt[f] for f in ANSWER_FIELDS])),
    ]


# The answer, unless this generation has one already (a save run again after a commit whose
# outcome was lost): RETURNING says whether this one made it.
INSERT_ANSWER = (
    f"INSERT INTO {MESSAGE} ({', '.join(ANSWER_FIELDS)}) "
    f"SELECT {', '.join(['%s'] * len(ANSWER_FIELDS))} "
    f"WHERE NOT EXISTS (SELECT 1 FROM {MESSAGE} WHERE generation_id = %s AND role = %s) "
    "RETURNING id"
)


def save_answer(values: dict) -> list:
    """Insert the answer, mark its prompt answered, move the conversation to the top."""
    answer = [values[field] for field in ANSWER_FIELDS]
    return [
        (
            INSERT_ANSWER,
            sql.params([*answer, values["generation_id"], Message.Role.ASSISTANT.value]),
        ),
        (
            f"UPDATE {MESSAGE} SET failed = %s WHERE id = %s",
            sql.params([False, values["prompt_id"]]),
        ),
        (
            f"UPDATE {CONVERSATION} SET updated_at = %s WHERE id = %s",
            sql.params([values["created_at"], values["conversation_id"]]),
        ),
    ]


def answer_values(
    conversation_id: UUID, prompt_id: int, generation_id: UUID, created_at: datetime, **rest
) -> dict:
    return {
        "conversation_id": conversation_id,
        "prompt_id": prompt_id,
        "generation_id": generation_id,
        "created_at": created_at,
        "role": Message.Role.ASSISTANT.value,
        "failed": False,
        **rest,
    }
