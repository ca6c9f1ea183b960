"""Checks on the chat tables that several tests make."""

from django.db import connection


def orphan_message_count():
    """Messages whose conversation no longer exists (the foreign key should make this 0)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM chat_message m "
            "LEFT JOIN chat_conversation c ON c.id = m.conversation_id WHERE c.id IS NULL"
        )
        return cursor.fetchone()[0]
