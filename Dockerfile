# The receipt-streams worker image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY receipt_streams ./receipt_streams
RUN pip install --no-cache-dir .
# The client port listens on every interface; the admin listener (room receipts view behind
# admin tokens, health, metrics) stays on the container's loopback unless the deployment sets
# RECEIPT_STREAMS_ADMIN_HOST=0.0.0.0 and publishes 6067 on a private address only.
ENV RECEIPT_STREAMS_DATA_DIR=/data \
    RECEIPT_STREAMS_WEB_HOST=0.0.0.0 \
    RECEIPT_STREAMS_ADMIN_HOST=127.0.0.1
VOLUME /data
EXPOSE 6066 6067
ENTRYPOINT ["receipt-streams"]
CMD ["worker"]
