"""An OTLP/HTTP endpoint that accepts spans and drops them: the benchmark's stand-in collector.

    .venv/bin/python bench/otlp_sink.py 4318   # then OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318

Prints how many export requests and bytes it received when stopped (Ctrl-C or SIGTERM), so a
run with tracing on can show that spans were really exported. It does not decode them: a real
collector would run elsewhere, and decoding here would take CPU from the workers being measured.
"""

import contextlib
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = {"requests": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        size = int(self.headers.get("Content-Length", 0))
        self.rfile.read(size)
        received["requests"] += 1
        received["bytes"] += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(
        ("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 4318), Sink
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        server.serve_forever()
    print(
        f"otlp sink: {received['requests']} export requests, {received['bytes']} bytes", flush=True
    )


if __name__ == "__main__":
    main()
