# Stand-in for redis:8.2 (see README.md): Debian's redis-server, run as the redis user with its
# data in /data like the upstream image.
ARG BASE_IMAGE=local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis -m 0750 /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
