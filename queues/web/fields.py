"""Serializer fields that take JSON strings only.

DRF's CharField turns 5, 1.5 or true into "5", "1.5", "True": a client sending the wrong type
gets a 400 saying so instead of a stored surprise. The queues app's API uses them; so do the
project's apps.
"""

from rest_framework import serializers


class StringsOnly:
    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictCharField(StringsOnly, serializers.CharField):
    """Its `max_length` holds for the string as sent, before surrounding whitespace is trimmed:
    the published schema's `maxLength` is about what the client sends."""

    def to_internal_value(self, data):
        if isinstance(data, str) and self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StrictChoiceField(StringsOnly, serializers.ChoiceField):
    pass
