# reciprocam serve: KServe's model server with the OpenVINO and ONNX Runtime runtimes. No torch.
#   docker build -t reciprocam-ir:0.1.0 .
#   docker run -p 8080:8080 -v $PWD/models/efficientnet_lite0:/mnt/models:ro reciprocam-ir:0.1.0
# The artifact folder (written by reciprocam-export) is mounted or downloaded at /mnt/models,
# where KServe's storage initializer puts STORAGE_URI (deploy/inferenceservice.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/reciprocam
# The serve subset of the tested lock (requirements/serve.txt, made by scripts/lock.sh): the
# image built next month has the versions tested today.
COPY requirements/serve.txt ./requirements/
RUN pip install --require-hashes --no-deps -r requirements/serve.txt
COPY pyproject.toml setup.cfg README.md ./
COPY reciprocam_ir ./reciprocam_ir
RUN pip install --no-deps . \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
    && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin reciprocam

USER 1000
EXPOSE 8080 8081
ENTRYPOINT ["reciprocam", "serve", "--host", "0.0.0.0"]
CMD ["/mnt/models"]
