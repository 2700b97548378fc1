# nginx as a boxer instance on Lambda.
#   docker build -f lambda_image/Dockerfile -t boxer-lambda .
#   docker build -f lambda_image/examples/nginx.Dockerfile -t <ecr-url>:nginx lambda_image/examples
# Deployment file command: ["nginx", "-c", "/etc/nginx/boxer.conf"]

ARG BOXER_IMAGE=boxer-lambda
ARG NGINX_VERSION=1.26.1

FROM ${BOXER_IMAGE} AS build
ARG NGINX_VERSION
RUN yum install -y gcc make tar gzip pcre-devel zlib-devel && yum clean all
# Every writable path points into /tmp: the rest of a Lambda sandbox is read-only.
RUN curl -fsSL "https://nginx.org/download/nginx-${NGINX_VERSION}.tar.gz" | tar xz -C /tmp \
    && cd "/tmp/nginx-${NGINX_VERSION}" \
    && ./configure --prefix=/opt/nginx --sbin-path=/usr/local/bin/nginx \
         --pid-path=/tmp/nginx.pid --error-log-path=stderr \
         --http-log-path=/dev/stdout --http-client-body-temp-path=/tmp/nginx-body \
         --http-proxy-temp-path=/tmp/nginx-proxy --http-fastcgi-temp-path=/tmp/nginx-fastcgi \
         --http-uwsgi-temp-path=/tmp/nginx-uwsgi --http-scgi-temp-path=/tmp/nginx-scgi \
         --without-http_rewrite_module \
    && make -j"$(nproc)" && make install

FROM ${BOXER_IMAGE}
COPY --from=build /usr/local/bin/nginx /usr/local/bin/nginx
COPY --from=build /opt/nginx /opt/nginx
COPY nginx-boxer.conf /etc/nginx/boxer.conf
# CMD stays the boxer handler from the base image.
