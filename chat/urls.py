from rest_framework.routers import SimpleRouter

from chat.views import ConversationViewSet


class OptionalSlashRouter(SimpleRouter):
    """Routes that match with and without a trailing slash (DRF's argument takes a bool only)."""

    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("conversations", ConversationViewSet, basename="conversation")

urlpatterns = router.urls
