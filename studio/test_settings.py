"""Settings for the test run: everything the test process writes goes to a
temporary DATA_DIR, never the user's ./data."""

import os
import tempfile

os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="studio-test-data-"))
os.environ.pop("REDIS_URL", None)  # unit tests use the in-memory broker and channel layer

from studio.settings import *  # noqa: E402,F401,F403

# Users are created in most tests: hash their passwords quickly (the
# production hasher is deliberately slow, ~0.3 s a password on 2 cores).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
