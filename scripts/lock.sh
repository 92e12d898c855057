#!/usr/bin/env bash
# Rewrite requirements.lock from the set-up .venv (run scripts/setup.sh first, after a dependency
# change, with the lock's pins loosened where the change needs it): every installed distribution
# at its exact version, this project itself left out, torch without its local build tag.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
{
  sed -n '1,/^# Regenerate/p' requirements.lock
  .venv/bin/python -m pip --disable-pip-version-check freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) pins"
