# redis as a boxer instance on Lambda: Debian's redis-server on boxer's image.
#   docker build -f lambda_image/Dockerfile -t boxer-lambda .
#   docker build -f lambda_image/examples/redis.Dockerfile -t <ecr-url>:redis lambda_image/examples
# (or: python3 lambda_image/build.py --example redis, with buildah). Deployment file command:
#   ["redis-server", "--port", "6379", "--save", "", "--dir", "/tmp"]

ARG BOXER_IMAGE=boxer-lambda
FROM ${BOXER_IMAGE}
# Dynamically linked against the base's C library, as the interposer needs (a static binary
# would bypass it). Debian starts no daemon inside an image build (no init runs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/*
# ENTRYPOINT and CMD stay boxer's: awslambdaric and the handler.
