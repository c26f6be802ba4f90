# airfed's image: a partner's node (`airfed node start`), the task runtime of
# task pods (`airfed task run`), the ledger's log server, and Airflow with
# airfed's plugin and DAG factory for the official Apache Airflow chart.
#
#   docker build -t ghcr.io/airfed/airfed:0.1.0 .
#
# It runs as the image's non-root `airflow` user (uid 50000) and writes only
# to mounted volumes and /tmp, so it runs with a read-only root filesystem.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
USER root
RUN mkdir -p /opt/airfed/src && chown -R airflow:0 /opt/airfed
USER airflow

COPY --chown=airflow:0 pyproject.toml README.md requirements.lock /opt/airfed/src/
COPY --chown=airflow:0 sdk /opt/airfed/src/sdk
COPY --chown=airflow:0 node_api /opt/airfed/src/node_api
COPY --chown=airflow:0 ledger /opt/airfed/src/ledger
COPY --chown=airflow:0 operators /opt/airfed/src/operators
COPY --chown=airflow:0 plugins /opt/airfed/src/plugins
COPY --chown=airflow:0 dags /opt/airfed/src/dags

# The locked versions, PyTorch's CPU build (the default wheel pulls CUDA),
# and Airflow kept at the base image's version.
RUN pip install --no-cache-dir \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        --constraint /opt/airfed/src/requirements.lock \
        "apache-airflow==${AIRFLOW_VERSION}" /opt/airfed/src \
    && rm -rf /opt/airfed/src \
    && ln -s "$(python -c 'import airfed.dags, pathlib; print(pathlib.Path(airfed.dags.__file__).parent)')" \
        /opt/airfed/dags \
    && airfed --help >/dev/null

# Airflow finds the plugin through its entry point; the DAG factory is the
# installed airfed.dags package.
# Caches go to /tmp: the root filesystem is read-only in the charts.
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/airfed/dags \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache
