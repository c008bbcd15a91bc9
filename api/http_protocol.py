"""uvicorn's HTTP/1.1 protocol, answering requests it cannot parse with problem+json.

uvicorn refuses a request it cannot parse (`Content-Length: -5`, two different lengths, a bad
header) itself, before the app sees it, with a text/plain 400. Serving with this protocol
(`uvicorn --http api.http_protocol:ProblemHTTPProtocol`, or `http=PROBLEM_HTTP_PROTOCOL` in
`uvicorn.run`) gives those clients the same kind of error body as every other one.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from api.problems import PROBLEM_JSON, PROBLEM_TYPE_BASE

PROBLEM_HTTP_PROTOCOL = "api.http_protocol:ProblemHTTPProtocol"

_BODY = json.dumps(
    {
        "type": PROBLEM_TYPE_BASE + "malformed-request",
        "title": "Bad Request",
        "status": 400,
        "detail": "the request is not valid HTTP/1.1 (a malformed request line or header, such "
        "as a Content-Length that is not one non-negative decimal number); nothing was read",
    },
    separators=(",", ":"),
).encode()


class ProblemHTTPProtocol(AutoHTTPProtocol):  # httptools' protocol, or h11's without it
    def send_400_response(self, msg: str) -> None:
        """Replaces uvicorn's text/plain answer (same status, headers and closing)."""
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
            b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + _BODY)
        self.transport.close()
