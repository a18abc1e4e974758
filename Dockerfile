# The Peakwise operator image.
#
#   docker build -t peakwise:dev .
#   docker run --rm peakwise:dev --help          # any peakwise subcommand
#
# The base is pinned by exact tag (Python patch release and Debian release); both
# stages start from the same one, so the venv built in the first runs unchanged in
# the second. Pin by digest as well (`python:3.11.14-slim-bookworm@sha256:...`) in a
# release pipeline that can resolve it. PYTHON_BASE swaps in another base with the same
# layout (`python` and `python -m venv` on PATH, Debian's groupadd/useradd): the tests,
# which reach no image registry, build one from Debian packages (hack/image base).
ARG PYTHON_BASE=python:3.11.14-slim-bookworm
FROM ${PYTHON_BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- build: a venv with the locked dependencies, then the wheel ----------------------
# The venv loses what only installs need (pip, setuptools) and the packages' own test
# suites (73 MB of scipy, numpy, scikit-learn, ... tests).
FROM base AS build
# The runtime user, made here and its two lines copied into the final stage, which so runs
# no command at all (a builder's mounts for RUN steps leave nothing in it either).
RUN groupadd --system --gid 65532 peakwise \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin peakwise
WORKDIR /src
# requirements.lock pins every package of the project and its test tools; it is used
# as a constraints file, so only the operator's runtime dependencies (read from
# pyproject.toml) are installed, each at the locked version. This layer depends on
# those two files only, so a change to the code reuses it.
COPY requirements.lock pyproject.toml ./
RUN python -m venv /opt/buildtools \
    && /opt/buildtools/bin/pip install --constraint requirements.lock setuptools \
    && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >runtime-requirements.txt \
    && python -m venv /opt/peakwise \
    && /opt/peakwise/bin/pip install --constraint requirements.lock --requirement runtime-requirements.txt
COPY README.md ./
# peakwise/operator and peakwise/forecasting are symlinks to these two folders (namespace
# subpackages: neither has an __init__.py, so neither shadows the standard library).
COPY operator/ operator/
COPY forecasting/ forecasting/
COPY peakwise/ peakwise/
RUN /opt/buildtools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/peakwise/bin/pip install --no-deps /wheels/peakwise-*.whl \
    && /opt/peakwise/bin/pip check \
    && /opt/peakwise/bin/pip uninstall --yes pip setuptools \
    && find /opt/peakwise/lib -type d -name tests -prune -exec rm -rf {} + \
    && /opt/peakwise/bin/peakwise --help >/dev/null

# --- runtime: the venv and the user only; no RUN -------------------------------------
FROM base AS runtime
LABEL org.opencontainers.image.title="peakwise" \
      org.opencontainers.image.description="Kubernetes operator that right-sizes GPU inference services from demand forecasts under per-namespace cost ceilings" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /etc/passwd /etc/group /etc/
COPY --from=build /opt/peakwise /opt/peakwise
# The chart mounts an emptyDir on /tmp and keeps the root filesystem read-only;
# matplotlib (used by `peakwise backtest --plot`) keeps its cache there.
ENV PATH=/opt/peakwise/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /tmp
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# 8080: Prometheus /metrics; 8081: kopf's /healthz liveness endpoint.
EXPOSE 8080 8081
ENTRYPOINT ["peakwise"]
CMD ["operator", "run"]
