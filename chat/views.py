"""The chat REST API. Views parse input, call one service, and render the result."""

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from chat import selectors, services
from chat.models import Conversation
from chat.serializers import ConversationSerializer, MessageSerializer
from queues.web.openapi import AUTHENTICATED, WITH_BODY, errors

_ID = re.compile(r"[1-9][0-9]{0,17}")


class ConversationNotFound(exceptions.NotFound):
    """One answer for missing, someone else's, deletion-requested and malformed ids alike."""

    default_detail = "Conversation not found."
    default_code = "conversation_not_found"


_ID_PARAMETER = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)
_DELETION_ACCEPTED = inline_serializer(
    "DeletionAccepted",
    {
        "ok": serializers.BooleanField(),
        "job_id": serializers.UUIDField(help_text="Follow it at /api/queues/jobs/{job_id}."),
        "conversation_id": serializers.IntegerField(),
    },
)


@extend_schema_view(
    # An out-of-range `page` is a 404 too.
    list=extend_schema(
        responses={200: ConversationSerializer(many=True), **errors(*AUTHENTICATED, 404)}
    ),
    create=extend_schema(
        responses={201: ConversationSerializer, **errors(*AUTHENTICATED, *WITH_BODY)}
    ),
    retrieve=extend_schema(
        parameters=[_ID_PARAMETER],
        responses={200: ConversationSerializer, **errors(*AUTHENTICATED, 404)},
    ),
    partial_update=extend_schema(
        parameters=[_ID_PARAMETER],
        request=ConversationSerializer,
        responses={200: ConversationSerializer, **errors(*AUTHENTICATED, *WITH_BODY, 404)},
    ),
    destroy=extend_schema(
        parameters=[_ID_PARAMETER],
        description="Hides the conversation at once and queues its deletion.",
        responses={200: _DELETION_ACCEPTED, **errors(*AUTHENTICATED, 404)},
    ),
)
class ConversationViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = ConversationSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    # Any path segment reaches get_object, so every malformed id gets the same 404 body.
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        if self.action in ("list", "retrieve", "partial_update"):
            return selectors.conversations_of(self.request.user)
        # Touching messages must not count a conversation's messages first.
        return Conversation.objects.visible().filter(owner=self.request.user)

    def get_serializer_class(self):
        return MessageSerializer if self.action == "messages" else ConversationSerializer

    def get_object(self):
        raw = self.kwargs[self.lookup_field]
        conversation = (
            self.get_queryset().filter(pk=int(raw)).first() if _ID.fullmatch(raw) else None
        )
        if conversation is None:
            raise ConversationNotFound()
        return conversation

    def perform_create(self, serializer):
        serializer.instance = services.create_conversation(
            owner_id=self.request.user.pk, **serializer.validated_data
        )

    def partial_update(self, request, *args, **kwargs):
        # The title is the only writable field, so a PATCH must carry it.
        return self.update(request, *args, **kwargs)

    def perform_update(self, serializer):
        services.rename_conversation(serializer.instance, **serializer.validated_data)

    def destroy(self, request, *args, **kwargs):
        # No read first: the service's conditional UPDATE finds the owner's visible conversation.
        raw = self.kwargs[self.lookup_field]
        job = None
        if _ID.fullmatch(raw):
            job = services.request_deletion(
                int(raw), owner_id=request.user.pk, request_id=request.request_id
            )
        if job is None:  # missing, someone else's, already being deleted, or a malformed id
            raise ConversationNotFound()
        return Response(
            {"ok": True, "job_id": str(job.id), "conversation_id": int(raw)},
            status=status.HTTP_200_OK,
        )

    @extend_schema(
        methods=["GET"],
        parameters=[_ID_PARAMETER],
        responses={200: MessageSerializer(many=True), **errors(*AUTHENTICATED, 404)},
    )
    @extend_schema(
        methods=["POST"],
        parameters=[_ID_PARAMETER],
        request=MessageSerializer,
        responses={201: MessageSerializer, **errors(*AUTHENTICATED, *WITH_BODY, 404)},
    )
    @action(detail=True, methods=["get", "post"])
    def messages(self, request, *args, **kwargs):
        conversation = self.get_object()
        if request.method == "POST":
            serializer = MessageSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            try:
                message = services.add_message(
                    conversation_id=conversation.pk,
                    user_id=request.user.pk,
                    **serializer.validated_data,
                )
            except services.ConversationGone:
                raise ConversationNotFound() from None
            return Response(MessageSerializer(message).data, status=status.HTTP_201_CREATED)
        page = self.paginate_queryset(conversation.messages.all())
        return self.get_paginated_response(MessageSerializer(page, many=True).data)
