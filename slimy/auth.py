"""`POST /api/auth/token`: trade a username and password for an API token."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from queues.web.openapi import WITH_BODY, errors
from slimy.throttling import LoginRateThrottle


class InvalidCredentials(exceptions.ValidationError):
    default_code = "invalid_credentials"


class ObtainTokenView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    serializer_class = AuthTokenSerializer
    # Slows password guessing; the rate is AUTH_TOKEN_RATE, counted per client address.
    throttle_classes = [LoginRateThrottle]

    @extend_schema(
        responses={
            200: inline_serializer("Token", {"token": serializers.CharField()}),
            **errors(*WITH_BODY, 406, 429),
        }
    )
    def post(self, request):
        serializer = self.serializer_class(data=request.data, context={"request": request})
        if not serializer.is_valid():
            if "non_field_errors" in serializer.errors:
                raise InvalidCredentials("Unable to log in with the provided credentials.")
            raise exceptions.ValidationError(serializer.errors)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})
