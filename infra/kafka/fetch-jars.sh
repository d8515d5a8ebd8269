#!/usr/bin/env bash
# Puts the jars of an Apache Kafka broker in a cache folder and prints that folder.
# Only Maven Central is reachable here, not the release tarball, so pom.xml resolves the
# broker and a logging backend and copies them. Nothing is fetched when they are there.
# TILLSTREAM_KAFKA_LIBS overrides the folder.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
libs="${TILLSTREAM_KAFKA_LIBS:-${XDG_CACHE_HOME:-$HOME/.cache}/tillstream/kafka-libs-$version}"

if [[ -f "$libs/kafka_2.13-$version.jar" ]]; then
    echo "$libs"
    exit 0
fi

if ! command -v mvn >/dev/null; then
    echo "fetch-jars.sh: mvn is not installed; it is needed to fetch the Kafka $version jars" >&2
    exit 1
fi

mkdir -p "$(dirname "$libs")"
# Copy into a private folder and rename it into place, so that a concurrent run or an
# interrupted one never leaves a half-filled folder that looks complete.
staging="$(mktemp -d "$libs.XXXXXX")"
mvn_log="$staging.log"
trap 'rm -rf "$staging"' EXIT

echo "fetching Apache Kafka $version jars from Maven Central into $libs" >&2
if ! mvn -q -B -f "$here/pom.xml" package -Dkafka.libs.dir="$staging" >"$mvn_log" 2>&1; then
    reason="$(sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" | grep -m1 '\[ERROR\]' || tail -n1 "$mvn_log")"
    echo "fetch-jars.sh: mvn could not fetch the Kafka $version jars: ${reason:-no output} (log: $mvn_log)" >&2
    exit 1
fi
rm -f "$mvn_log"

if ! mv -T "$staging" "$libs" 2>/dev/null && [[ ! -f "$libs/kafka_2.13-$version.jar" ]]; then
    echo "fetch-jars.sh: could not move the jars into $libs" >&2
    exit 1
fi
echo "$libs"
