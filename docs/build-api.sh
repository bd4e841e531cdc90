#!/usr/bin/env bash
# Builds the API reference and the documentation site with docfx (the version pinned in dotnet-tools.json):
# docs/docfx.json reads the XML documentation of src/ForwardAD, src/ForwardAD.Cuda and src/ForwardAD.Plots and the
# pages docs/*.md (docs/toc.yml), writes the API's YAML to docs/api/ and the site to docs/_site/ (both git-ignored).
# Warnings fail the build (a broken cref or link). About a minute on two cores. Open docs/_site/index.html, or serve it:
#   docs/build-api.sh --serve        (extra arguments go to docfx)
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet tool restore
dotnet docfx docs/docfx.json --warningsAsErrors "$@"
