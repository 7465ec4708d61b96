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
