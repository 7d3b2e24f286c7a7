"""`PiecesResponse`: an answer of known length made of bytes and file
ranges, sent by `pacs_site.asgi.Handler` as ASGI messages — the files as
`http.response.zerocopysend` where the server offers it (our daphne on
plain HTTP), read and streamed elsewhere.  The server's side of the
extension is exercised against the real web process by the WADO-RS tests.
"""

import asyncio

import pytest
from django.core.handlers.asgi import ASGIRequest
from django.test import RequestFactory

from pacs_site.asgi import django_asgi_app
from portal.streaming import ZERO_COPY, FileChanged, FileRange, PiecesResponse


def asgi_request(*, zero_copy):
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/dicomweb/studies",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "server": ("127.0.0.1", 80),
    }
    if zero_copy:
        scope["extensions"] = {ZERO_COPY: {}}
    return ASGIRequest(scope, None)


def sent_messages(response):
    """What the handler sends for `response`; file messages carry the
    bytes of their range, read while the file is open."""
    messages = []

    async def send(message):
        if message["type"] == ZERO_COPY:
            f = message["file"]
            f.seek(message["offset"])
            message = {**message, "file": f.read(message["count"])}
        messages.append(message)

    asyncio.run(django_asgi_app.send_response(response, send))
    return messages


@pytest.fixture
def files(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"A" * 1000)
    two.write_bytes(bytes(range(256)) * 3)
    return one, two


def pieces(one, two):
    return [b"--head1\r\n", FileRange(one, 0, 1000, 1000), b"--head2\r\n", FileRange(two, 10, 500, 768), b"--end"]


def expected(one, two):
    return b"--head1\r\n" + one.read_bytes() + b"--head2\r\n" + two.read_bytes()[10:510] + b"--end"


def test_the_length_is_known_before_the_answer_starts(files):
    response = PiecesResponse(asgi_request(zero_copy=True), pieces(*files), content_type="multipart/related")
    assert int(response["Content-Length"]) == len(expected(*files))


def test_a_server_that_takes_files_gets_them_as_zero_copy_sends(files):
    response = PiecesResponse(asgi_request(zero_copy=True), pieces(*files), content_type="multipart/related")
    messages = sent_messages(response)
    start, *body = messages
    assert start["type"] == "http.response.start"
    assert (b"Content-Length", str(len(expected(*files))).encode()) in start["headers"]
    assert [m["type"] for m in body] == ["http.response.body", ZERO_COPY] * 2 + ["http.response.body"] * 2
    assert body[-1] == {"type": "http.response.body"}
    sent = b"".join(m["file"] if m["type"] == ZERO_COPY else m.get("body", b"") for m in body)
    assert sent == expected(*files)


@pytest.mark.parametrize("zero_copy", [True, False])
def test_a_file_that_changed_size_since_it_was_counted_stops_the_answer(files, zero_copy):
    """Rather than a body that does not match its Content-Length."""
    one, two = files
    response = PiecesResponse(asgi_request(zero_copy=zero_copy), pieces(one, two), content_type="multipart/related")
    two.write_bytes(b"rewritten, shorter")
    with pytest.raises(FileChanged):
        sent_messages(response)


def test_without_the_extension_the_pieces_are_read_and_streamed(files):
    response = PiecesResponse(asgi_request(zero_copy=False), pieces(*files), content_type="multipart/related")
    messages = sent_messages(response)
    assert ZERO_COPY not in {m["type"] for m in messages}
    assert b"".join(m.get("body", b"") for m in messages[1:]) == expected(*files)


def test_a_wsgi_request_iterates_the_same_bytes(files):
    response = PiecesResponse(RequestFactory().get("/"), pieces(*files), content_type="multipart/related")
    assert not response.zero_copy
    assert b"".join(response) == expected(*files)
    assert int(response["Content-Length"]) == len(expected(*files))
