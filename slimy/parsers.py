"""The API's one request body parser: DRF's JSON parser, with nesting too deep for the decoder
answered as a 400 rather than a 500."""

from rest_framework import exceptions
from rest_framework.parsers import JSONParser


class JSONParserWithDepthLimit(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
