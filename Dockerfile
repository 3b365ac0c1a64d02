# The receipt-streams image: every role (worker, api, relays, topics, import-synapse), used by
# docker-compose.yml and deploy/kubernetes/. Runs as an unprivileged user (uid 10001).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY receipt_streams ./receipt_streams
RUN pip install --no-cache-dir . \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin receipt-streams \
    && mkdir /data && chown receipt-streams /data
USER 10001
# The client port (Matrix endpoints, /healthz, a status-only /readyz) listens on every
# interface; the admin listener (/metrics, the detailed /readyz, and the room receipts view
# behind admin tokens) stays on the container's loopback unless the deployment sets
# RECEIPT_STREAMS_ADMIN_HOST=0.0.0.0 (docker-compose.yml and deploy/kubernetes/ do, for
# Prometheus) and publishes 6067 on a private address only.
ENV RECEIPT_STREAMS_DATA_DIR=/data \
    RECEIPT_STREAMS_WEB_HOST=0.0.0.0 \
    RECEIPT_STREAMS_ADMIN_HOST=127.0.0.1
VOLUME /data
EXPOSE 6066 6067
ENTRYPOINT ["receipt-streams"]
CMD ["worker"]
