# One image for every agent of this package (and the hub, with the [hub] extra).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY socs_agents ./socs_agents
RUN pip install --no-cache-dir '.[hub]' \
    && useradd --system --uid 9000 --home-dir /app --shell /usr/sbin/nologin ocs
ENV OCS_CONFIG_DIR=/config
# Agents need no privilege: they run as an unprivileged user (give it the data volumes).
USER ocs
# ocs-agent-cli reads INSTANCE_ID, SITE_HUB and SITE_HTTP from the environment.
ENTRYPOINT ["ocs-agent-cli"]
