# What verify-image.sh and measure-rss.sh share: the image they use, the
# Postgres they use, how containers run on this machine, and free ports.
# Sourced, not run.

TAG=${ROADIE_IMAGE:-localhost/roadie:check}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}

# How containers run on this machine: the OCI runtime cannot raise the
# process and file limits past the host's hard limits (podman asks for
# 1048576 open files), and crun 1.8 refuses this kernel's hybrid cgroup
# layout while runc accepts it. Lower limits and runc change nothing the
# checks rely on. LIMITS applies to builds too.
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
RUN=(--runtime runc "${LIMITS[@]}")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
