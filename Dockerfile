# One image runs any role: foldflow worker | activities | projector | demo ...
# Build stage: build the wheel (and its dependencies' wheels) with the tools it needs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md streams.md ./
COPY engine/ engine/
COPY projections/ projections/
RUN python -m pip install --no-cache-dir --upgrade pip wheel \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# Final stage: no compilers, no pip cache, a non-root user.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 foldflow
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links=/wheels foldflow \
 && rm -rf /wheels
USER foldflow
WORKDIR /home/foldflow
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["foldflow"]
CMD ["worker"]
