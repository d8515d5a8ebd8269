# The tillstream image: one image for every component (`watch`, `poll`, `worker`, `sink`,
# or `up` for everything in one container). Configuration is environment only
# (TILLSTREAM_*), see tillstream/settings.py and docs/operations.md.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is needed.
RUN python -m venv /opt/tillstream
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tillstream ./tillstream
COPY producers ./producers
COPY processors ./processors
COPY sinks ./sinks
COPY dashboards ./dashboards
RUN /opt/tillstream/bin/pip install .


FROM python:3.11-slim

# The user the components run as. Its uid/gid should own the host folders that
# are bind-mounted into `watch` (inbox, archive, failed): build with
# `--build-arg TILLSTREAM_UID=$(id -u) --build-arg TILLSTREAM_GID=$(id -g)`
# (docker-compose.yml passes both through) when yours are not 1000.
ARG TILLSTREAM_UID=1000
ARG TILLSTREAM_GID=1000

RUN groupadd --non-unique --gid "${TILLSTREAM_GID}" tillstream \
    && useradd --non-unique --uid "${TILLSTREAM_UID}" --gid "${TILLSTREAM_GID}" \
        --no-create-home --home-dir /var/lib/tillstream --shell /usr/sbin/nologin tillstream \
    && mkdir -p /var/lib/tillstream/data /var/lib/tillstream/inbox \
        /var/lib/tillstream/archive /var/lib/tillstream/failed \
    && chown -R tillstream:tillstream /var/lib/tillstream

COPY --from=build /opt/tillstream /opt/tillstream

ENV PATH=/opt/tillstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TILLSTREAM_DATA_DIR=/var/lib/tillstream/data \
    TILLSTREAM_WATCH__INBOX=/var/lib/tillstream/inbox \
    TILLSTREAM_WATCH__ARCHIVE=/var/lib/tillstream/archive \
    TILLSTREAM_WATCH__FAILED=/var/lib/tillstream/failed \
    TILLSTREAM_METRICS__HOST=0.0.0.0 \
    TILLSTREAM_METRICS__PORT=9464

WORKDIR /var/lib/tillstream
USER tillstream

# /metrics, /health and /api/status of the component.
EXPOSE 9464

# /health answers 200 while every component of the process runs, 503 otherwise;
# urlopen raises on 503 and on a refused connection, so the exit code follows.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TILLSTREAM_METRICS__PORT', '9464') + '/health', timeout=4)"]

ENTRYPOINT ["tillstream"]
CMD ["up"]
