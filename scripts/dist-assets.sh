#!/usr/bin/env bash
# Generates the man page and shell completions from the clap definitions into target/assets/,
# where the .deb (Cargo.toml [package.metadata.deb] assets) picks them up.
# Usage: scripts/dist-assets.sh [BINARY]   (default target/release/shiptoken)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/shiptoken}
mkdir -p target/assets
"$bin" man > target/assets/shiptoken.1
"$bin" completions bash > target/assets/shiptoken.bash
"$bin" completions zsh > target/assets/_shiptoken
"$bin" completions fish > target/assets/shiptoken.fish
echo "man page and completions written to target/assets/"
