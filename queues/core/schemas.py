"""The fields every job's data carries. Job types' schemas extend this serializer."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from rest_framework import serializers


class JobData(serializers.Serializer):
    user_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    request_id = serializers.RegexField(re.compile(r"^[A-Za-z0-9._:-]{1,128}$"))

    def validate_user_id(self, value: int) -> int:
        if self.context.get("user_checked"):
            return value
        if not get_user_model().objects.filter(pk=value).exists():
            raise serializers.ValidationError(f"user {value} does not exist")
        return value


class UserlessJobData(JobData):
    """For jobs the app enqueues on nobody's behalf (django.tasks tasks): `user_id` optional."""

    user_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
