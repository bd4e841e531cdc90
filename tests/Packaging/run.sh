#!/usr/bin/env bash
# The packaging check: packs ForwardAD, ForwardAD.Cuda, ForwardAD.Plots and the forwardad tool (ForwardAD.Tool) into a
# fresh local feed, then uses them as a user would, from that feed only:
#   1. builds and runs Consumer/ (a small program on the ForwardAD and ForwardAD.Plots packages) against the feed;
#   2. installs the tool from the feed into a temporary folder, runs `forwardad --version` and a one-epoch training
#      run that writes its metrics and its plot.
# Every dotnet command runs with -warnaserror: a warning fails the check. Everything is written under one temporary
# folder (removed at the end), with its own NuGet package cache, so that no ForwardAD package cached by an earlier run
# can stand in for the fresh ones; a nuget.config there maps ForwardAD* to the local feed alone and takes third-party
# packages from the machine's NuGet cache or nuget.org.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/forwardad-packaging.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "packaging check FAILED: $*" >&2; exit 1; }
step() { echo "== packaging: $*"; }
start=$SECONDS

feed=$work/feed
step "packing into $feed"
# The tool first: it builds the three libraries, which the next packs then find up to date.
for project in examples/ForwardAD.Cli src/ForwardAD src/ForwardAD.Cuda src/ForwardAD.Plots; do
  dotnet pack "$project" -c Release -o "$feed" -warnaserror -nologo -v:quiet || fail "dotnet pack $project"
done
shopt -s nullglob
libraries=("$feed"/ForwardAD.[0-9]*.nupkg)
[ ${#libraries[@]} -eq 1 ] || fail "expected one ForwardAD package in $feed, found ${#libraries[@]}"
version=${libraries[0]##*/ForwardAD.}
version=${version%.nupkg}
for id in ForwardAD ForwardAD.Cuda ForwardAD.Plots ForwardAD.Tool ForwardAD.Tool.linux-x64; do
  [ -f "$feed/$id.$version.nupkg" ] || fail "$id.$version.nupkg is missing from the feed"
done
for id in ForwardAD ForwardAD.Cuda ForwardAD.Plots; do
  [ -f "$feed/$id.$version.snupkg" ] || fail "$id.$version.snupkg (symbols) is missing from the feed"
done
echo "version $version:"
(cd "$feed" && ls -l -- *.nupkg *.snupkg | awk '{ printf "  %10d  %s\n", $5, $9 }')

# The machine's NuGet cache, read as a plain folder feed for third-party packages (saves downloading them again).
cache=$(dotnet nuget locals global-packages --list | sed 's/^global-packages: *//')
cat > "$work/nuget.config" <<CONFIG
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="forwardad-feed" value="$feed" />
    <add key="machine-cache" value="$cache" />
    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" protocolVersion="3" />
  </packageSources>
  <packageSourceMapping>
    <packageSource key="forwardad-feed">
      <package pattern="ForwardAD" />
      <package pattern="ForwardAD.*" />
    </packageSource>
    <packageSource key="machine-cache">
      <package pattern="*" />
    </packageSource>
    <packageSource key="nuget.org">
      <package pattern="*" />
    </packageSource>
  </packageSourceMapping>
</configuration>
CONFIG
export NUGET_PACKAGES=$work/packages

step "building the consumer against ForwardAD $version from the feed"
cp -r tests/Packaging/Consumer "$work/consumer"
cp "$work/nuget.config" "$work/consumer/nuget.config"
rm -rf "$work/consumer/bin" "$work/consumer/obj"
dotnet build "$work/consumer" -c Release -p:ForwardADVersion="$version" -warnaserror -nologo -v:quiet \
  || fail "the consumer does not build against the packages"
[ -d "$NUGET_PACKAGES/forwardad/$version" ] || fail "the consumer did not restore ForwardAD $version"
step "running the consumer"
dotnet "$work/consumer/bin/Release/net10.0/Consumer.dll" "$work/consumer.png" || fail "the consumer failed (exit $?)"
[ -s "$work/consumer.png" ] || fail "the consumer wrote no chart"

step "installing the forwardad tool (ForwardAD.Tool $version) from the feed"
dotnet tool install --tool-path "$work/tool" --configfile "$work/nuget.config" ForwardAD.Tool --version "$version" \
  || fail "dotnet tool install ForwardAD.Tool $version"
forwardad=$work/tool/forwardad
printed=$("$forwardad" --version) || fail "forwardad --version exited $?"
echo "$printed"
[[ $printed == "forwardad $version"* ]] || fail "forwardad --version printed '$printed', expected 'forwardad $version…'"
step "forwardad train: one epoch on the digits, with its plot"
"$forwardad" train --data digits --epochs 1 --quiet --metrics "$work/run/m.csv" || fail "forwardad train exited $?"
[ "$(wc -l < "$work/run/m.csv")" -ge 2 ] || fail "forwardad train wrote no metrics row to m.csv"
[ -s "$work/run/m.png" ] && [ -s "$work/run/m.svg" ] || fail "forwardad train drew no plot (m.png, m.svg)"

echo "packaging check passed in $((SECONDS - start)) s"
