# redis as a boxer instance on Lambda.
#   docker build -f lambda_image/Dockerfile -t boxer-lambda .
#   docker build -f lambda_image/examples/redis.Dockerfile -t <ecr-url>:redis lambda_image/examples
# Deployment file command: ["redis-server", "--port", "6379", "--save", "", "--dir", "/tmp"]

ARG BOXER_IMAGE=boxer-lambda
ARG REDIS_VERSION=7.2.5

# Compiled here, against the same C library the interposer was built for (no static binary:
# the interposer needs the dynamic libc calls).
FROM ${BOXER_IMAGE} AS build
ARG REDIS_VERSION
RUN yum install -y gcc make tar gzip && yum clean all
RUN curl -fsSL "https://download.redis.io/releases/redis-${REDIS_VERSION}.tar.gz" | tar xz -C /tmp \
    && make -C "/tmp/redis-${REDIS_VERSION}" -j"$(nproc)" BUILD_TLS=no MALLOC=libc \
    && install -m 0755 "/tmp/redis-${REDIS_VERSION}/src/redis-server" \
                       "/tmp/redis-${REDIS_VERSION}/src/redis-cli" /usr/local/bin/

FROM ${BOXER_IMAGE}
COPY --from=build /usr/local/bin/redis-server /usr/local/bin/redis-cli /usr/local/bin/
# CMD stays the boxer handler from the base image.
