FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ARCHIVE_DIR=/data \
    BUCKETDAV_HOST=0.0.0.0 \
    BUCKETDAV_PORT=8080

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bucketdav \
    && mkdir -p /data && chown bucketdav /data

WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY README.md ./
COPY config ./config
COPY bucketdav ./bucketdav
RUN pip install --no-cache-dir --no-deps .

USER bucketdav
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
CMD ["bucketdav", "serve"]
