#!/bin/sh
# Write .env for `docker compose` with random passwords (docker-compose.yml has no defaults).
# Run once; an existing .env is left as it is. The file is readable by its owner only.
set -eu
cd "$(dirname "$0")/.."
if [ -e .env ]; then
    echo ".env exists; left as it is"
    exit 0
fi
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
umask 077
cat > .env <<ENV
POSTGRES_PASSWORD=$(secret)
MINIO_ROOT_USER=amseg
MINIO_ROOT_PASSWORD=$(secret)
# The API's port is published here; 0.0.0.0 (other machines) needs API_KEYS=<a key of 16+ characters>.
AMSEG_BIND=127.0.0.1
ENV
echo "wrote .env with random passwords"
