# The Peakwise operator image.
#
#   docker build -t peakwise:dev .
#   docker run --rm peakwise:dev --help          # any peakwise subcommand
#
# The base is pinned by exact tag (Python patch release and Debian release); every stage
# starts from it, so the venv built in one runs unchanged in the last. Pin by digest as
# well (`python:3.11.14-slim-bookworm@sha256:...`) in a release pipeline that can resolve
# it. PYTHON_BASE swaps in another base with the same layout (`python` and `python -m venv`
# on PATH, Debian's groupadd/useradd): the tests, which reach no image registry, build one
# from Debian packages (hack/image base).
ARG PYTHON_BASE=python:3.11.14-slim-bookworm
FROM ${PYTHON_BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- deps: the runtime user and a venv with the locked dependencies ------------------
# requirements.lock pins every package of the project and its test tools; it is used as a
# constraints file, so only the operator's runtime dependencies (read from pyproject.toml)
# are installed, each at the locked version. This stage depends on those two files only:
# the image's largest layer stays the same (and cached) across code changes. The venv
# loses what only installs need (pip, setuptools) and the packages' own test suites
# (73 MB of scipy, numpy, scikit-learn, ... tests); a .pth file puts the application
# (/opt/peakwise-app, from the build stage) on its path.
FROM base AS deps
RUN groupadd --system --gid 65532 peakwise \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin peakwise
WORKDIR /src
COPY requirements.lock pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >runtime-requirements.txt \
    && python -m venv /opt/peakwise \
    && /opt/peakwise/bin/pip install --constraint requirements.lock --requirement runtime-requirements.txt \
    && /opt/peakwise/bin/pip uninstall --yes pip setuptools \
    && find /opt/peakwise/lib -type d -name tests -prune -exec rm -rf {} + \
    && /opt/peakwise/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' >site-packages.txt \
    && echo /opt/peakwise-app >"$(cat site-packages.txt)/peakwise-app.pth"

# --- build: the wheel, installed into /opt/peakwise-app for the deps venv ------------
FROM deps AS build
RUN python -m venv /opt/buildtools \
    && /opt/buildtools/bin/pip install --constraint requirements.lock setuptools
COPY README.md ./
# peakwise/operator and peakwise/forecasting are symlinks to these two folders (namespace
# subpackages: neither has an __init__.py, so neither shadows the standard library).
COPY operator/ operator/
COPY forecasting/ forecasting/
COPY peakwise/ peakwise/
# --python: the console script's interpreter is the venv's, not the build tools'.
RUN /opt/buildtools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/buildtools/bin/pip --python /opt/peakwise/bin/python install --no-deps \
       --target /opt/peakwise-app /wheels/peakwise-*.whl \
    && /opt/buildtools/bin/pip --python /opt/peakwise/bin/python check \
    && PATH=/opt/peakwise-app/bin:$PATH peakwise --help >/dev/null

# --- runtime: the user's entries, the venv, the application; no RUN -------------------
FROM base AS runtime
LABEL org.opencontainers.image.title="peakwise" \
      org.opencontainers.image.description="Kubernetes operator that right-sizes GPU inference services from demand forecasts under per-namespace cost ceilings" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=deps /etc/passwd /etc/group /etc/
COPY --from=deps /opt/peakwise /opt/peakwise
COPY --from=build /opt/peakwise-app /opt/peakwise-app
# The chart mounts an emptyDir on /tmp and keeps the root filesystem read-only;
# matplotlib (used by `peakwise backtest --plot`) keeps its cache there.
ENV PATH=/opt/peakwise-app/bin:/opt/peakwise/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /tmp
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# 8080: Prometheus /metrics; 8081: kopf's /healthz liveness endpoint.
EXPOSE 8080 8081
ENTRYPOINT ["peakwise"]
CMD ["operator", "run"]
