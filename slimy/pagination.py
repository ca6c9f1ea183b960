"""Page-number pagination that treats a malformed `page` as an invalid page, not as page 1."""

from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination


class StrictPageNumberPagination(PageNumberPagination):
    def get_page_number(self, request, paginator):
        # DRF reads `?page=` (empty) as page 1; the schema says a page is a positive integer.
        raw = request.query_params.get(self.page_query_param)
        if raw is not None and raw not in self.last_page_strings and not raw.isdigit():
            raise NotFound(
                self.invalid_page_message.format(page_number=raw, message="Not a number.")
            )
        return super().get_page_number(request, paginator)
