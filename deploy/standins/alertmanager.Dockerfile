# Stand-in for prom/alertmanager (see README.md): Debian's alertmanager binary as the
# entrypoint, run as nobody with its state in /alertmanager like the upstream image.
ARG BASE_IMAGE=local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-alertmanager \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup /alertmanager
USER nobody
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
