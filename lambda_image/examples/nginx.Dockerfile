# nginx as a boxer instance on Lambda: Debian's nginx on boxer's image.
#   docker build -f lambda_image/Dockerfile -t boxer-lambda .
#   docker build -f lambda_image/examples/nginx.Dockerfile -t <ecr-url>:nginx lambda_image/examples
# (or: python3 lambda_image/build.py --example nginx). Deployment file command:
#   ["nginx", "-c", "/etc/nginx/boxer.conf"]

ARG BOXER_IMAGE=boxer-lambda
FROM ${BOXER_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/*
# Every writable path points into /tmp (the rest of a Lambda sandbox is read-only): the
# configuration sets pid, logs and temporary paths there.
COPY nginx-boxer.conf /etc/nginx/boxer.conf
# ENTRYPOINT and CMD stay boxer's: awslambdaric and the handler.
