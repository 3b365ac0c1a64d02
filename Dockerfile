# The receipt-streams worker image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY receipt_streams ./receipt_streams
RUN pip install --no-cache-dir .
ENV RECEIPT_STREAMS_DATA_DIR=/data \
    RECEIPT_STREAMS_WEB_HOST=0.0.0.0
VOLUME /data
EXPOSE 6066
ENTRYPOINT ["receipt-streams"]
CMD ["worker"]
