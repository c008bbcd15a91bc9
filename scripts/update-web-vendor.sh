#!/usr/bin/env bash
# Refresh the vendored browser libraries in api/web/vendor/ from the npm registry (needs npm).
# The files are committed: running amseg never downloads them. Versions are pinned here and in
# api/web/vendor/README.md; change both together.
set -euo pipefail
cd "$(dirname "$0")/.."
SWAGGER_UI=5.35.0
REDOC=2.5.4
vendor=api/web/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$SWAGGER_UI" "redoc@$REDOC" >/dev/null)
mkdir -p "$work/swagger" "$work/redoc" "$vendor/swagger-ui" "$vendor/redoc"
tar xzf "$work/swagger-ui-dist-$SWAGGER_UI.tgz" -C "$work/swagger"
tar xzf "$work/redoc-$REDOC.tgz" -C "$work/redoc"
for file in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE; do
    cp "$work/swagger/package/$file" "$vendor/swagger-ui/"
done
cp "$work/redoc/package/bundles/redoc.standalone.js" \
    "$work/redoc/package/bundles/redoc.standalone.js.LICENSE.txt" \
    "$work/redoc/package/LICENSE" "$vendor/redoc/"
# ReDoc's sidebar asks a CDN for the Redocly logo; point it at an empty data: URL instead (the
# image fails, and ReDoc's own onError hides it), so /redoc loads nothing from the internet.
logo=https://cdn.redoc.ly/redoc/logo-mini.svg
sed -i "s#\"$logo\"#\"data:,\"#" "$vendor/redoc/redoc.standalone.js"
if grep -q "cdn.redoc.ly" "$vendor/redoc/redoc.standalone.js"; then
    echo "redoc $REDOC still refers to cdn.redoc.ly: update the patch above" >&2
    exit 1
fi
echo "vendored swagger-ui-dist $SWAGGER_UI and redoc $REDOC into $vendor"
