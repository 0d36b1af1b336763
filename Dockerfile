# Pipewarden in a small image: a wheel built in one stage, with the hot path compiled by mypyc,
# installed into a slim one that runs as an unprivileged user.   docker build -t pipewarden .
FROM python:3.11-slim AS build
# A C compiler for setup.py, which compiles the hot path; only this stage has one.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY pipewarden ./pipewarden
COPY server ./server
COPY notifiers ./notifiers
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# The image runs the compiled hot path, or is not built: the line says which.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -c "from pipewarden.server.core import compiled as c; print('hot path', c.status()); \
raise SystemExit(c.status() != c.COMPILED)" \
    && useradd --system --uid 10001 --no-create-home pipewarden \
    && mkdir /data && chown pipewarden /data
USER pipewarden
# The log and snapshots; a named volume takes this directory's owner when first mounted.
VOLUME /data
EXPOSE 50051 9095
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9095/readyz', timeout=2)"]
ENTRYPOINT ["pipewarden", "serve", "--listen", "0.0.0.0:50051", "--http-listen", "0.0.0.0:9095", "--data-dir", "/data"]
