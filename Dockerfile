# cgm service image. Build: docker compose build. The same CGM_* variables as a local run.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cgm ./cgm
COPY drivers ./drivers
COPY simulators ./simulators
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/cgm cgm \
    && mkdir -p /var/lib/cgm && chown cgm /var/lib/cgm
USER cgm
ENV CGM_DATA_DIR=/var/lib/cgm CGM_API_HOST=0.0.0.0
EXPOSE 8080 9464
ENTRYPOINT ["cgm"]
CMD ["run"]
