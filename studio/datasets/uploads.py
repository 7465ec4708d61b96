"""Refuse oversized uploads while they stream in, before they fill the disk."""

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, SkipFile


class SizeLimitUploadHandler(FileUploadHandler):
    """Runs first: skips any file past UPLOAD_MAX_BYTES and marks the request
    (``request.upload_too_large``) so the view can say so."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.request_too_large = content_length > settings.UPLOAD_MAX_BYTES + 64 * 1024  # + form overhead

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        if self.request_too_large:
            self._refuse()

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > settings.UPLOAD_MAX_BYTES:
            self._refuse()
        return raw_data

    def file_complete(self, file_size):
        return None  # the next handler stores the file

    def _refuse(self):
        self.request.upload_too_large = True
        raise SkipFile()


def stop_twisted_parsing_uploads() -> bool:
    """Keep daphne's HTTP layer from parsing multipart bodies itself.

    Twisted's ``Request.requestReceived`` decodes every multipart POST body
    into ``request.args`` with the email parser, holding several copies of
    the whole body in memory (about 10x: 2 GB for a 200 MB upload) before
    daphne even hands the body to Django, which ignores ``args`` and parses
    the body again, streaming, into a temporary file. Call this once in the
    web process (studio/asgi.py) before daphne serves requests. Returns
    False where daphne is not installed (another ASGI server needs nothing).
    """
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:
        return False
    if getattr(WebRequest, "_studio_streams_uploads", False):
        return True
    original_init = WebRequest.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False  # read by twisted.web.http.Request.requestReceived

    WebRequest.__init__ = __init__
    WebRequest._studio_streams_uploads = True
    return True
