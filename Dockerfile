# Pipewarden in a small image: a wheel built in one stage, installed into a slim one that runs
# as an unprivileged user.   docker build -t pipewarden .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipewarden ./pipewarden
COPY server ./server
COPY notifiers ./notifiers
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
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
