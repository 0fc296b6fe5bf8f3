#!/usr/bin/env bash
# Builds offline.html, the page `dvc plots show` fills (.dvc/config: plots.html_template): DVC's own
# page loads Vega, Vega-Lite and Vega-Embed from a CDN and stays blank offline; this one carries them
# inline (the versions DVC's renderer asks for), with their licenses. Needs npm and its registry once:
#   bash .dvc/plots/build-offline-template.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
packages=(vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2)
{
  echo '<!DOCTYPE html>'
  echo '<html>'
  echo '<head>'
  echo '<meta charset="utf-8">'
  echo '<title>trace-rl: DVC plots</title>'
  for package in "${packages[@]}"; do
    name="${package%@*}"
    tar xzf "$(npm pack --silent "$package" | tail -1)"
    echo "<!-- $package, inlined from the npm registry; its license:"
    sed 's/--/- -/g' package/LICENSE
    echo '-->'
    echo '<script>'
    cat "package/build/$name.min.js"
    echo
    echo '</script>'
    rm -rf package
  done
  echo '<style>table { border-spacing: 15px; }</style>'
  echo '</head>'
  echo '<body>'
  echo '{plot_divs}'
  echo '</body>'
  echo '</html>'
} > "$here/offline.html"
echo "wrote $here/offline.html ($(du -h "$here/offline.html" | cut -f1))"
