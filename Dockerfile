# The MLOS Core image: the KServe serving runtime `axon deploy SPEC --emit kserve` writes
# (docs/operations.md, "On KServe"), or `docker run` on a model directory.
#
#   docker build -t mlos-core:0.1.0 .
#   docker build -t mlos-core:0.1.0-cuda --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 .
#
#   docker run -p 8080:8080 -v /var/lib/mlos/models/acme/ranker/2.1.0:/mnt/models:ro mlos-core:0.1.0 \
#       serve --model-dir /mnt/models --digest sha256:… --host 0.0.0.0 --port 8080 --state-dir /var/lib/mlos-core
#
# Linux x86_64 installs onnxruntime-gpu (pyproject.toml), which also runs on CPU; on a CUDA base
# image it finds the CUDA and cuDNN libraries there.
ARG BASE=python:3.12-slim

FROM python:3.12 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE}
# A CUDA base image has no Python of its own; python:* images skip this.
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi && python3 -m venv /opt/mlos
COPY --from=build /wheels /wheels
RUN /opt/mlos/bin/pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PATH=/opt/mlos/bin:$PATH
# Not root; the state directory (the admin token) is the only place the server writes.
RUN useradd --uid 1000 --create-home mlos && mkdir -p /var/lib/mlos-core && chown 1000:1000 /var/lib/mlos-core
USER 1000
EXPOSE 8080
ENTRYPOINT ["mlos-core"]
CMD ["serve", "--model-dir", "/mnt/models", "--host", "0.0.0.0", "--port", "8080", "--state-dir", "/var/lib/mlos-core"]
