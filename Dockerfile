# One image runs any role: foldflow worker | activities | projector | top | stuck | health ...
# Build stage: the wheel of foldflow and wheels of its dependencies, with the tools that takes.
# Base images are pinned to a Python patch release on a named Debian release.
FROM python:3.11.9-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md streams.md ./
COPY engine/ engine/
COPY projections/ projections/
RUN python -m pip install --no-cache-dir --upgrade pip wheel \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# Final stage: no compilers, no pip cache, no source tree, a non-root user.
FROM python:3.11.9-slim-bookworm
RUN useradd --create-home --uid 10001 --user-group foldflow
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links=/wheels foldflow \
 && rm -rf /wheels
USER foldflow
WORKDIR /home/foldflow
ENV PYTHONUNBUFFERED=1 \
    FOLDFLOW_METRICS_PORT=9100 \
    FOLDFLOW_LOG_FORMAT=json
# 9100: each role's metrics and health; 8080: `foldflow api`.
EXPOSE 9100 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["foldflow", "health", "readiness"]
ENTRYPOINT ["foldflow"]
CMD ["worker"]
