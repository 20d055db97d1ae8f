#!/bin/sh
# Example action for rules/github.yaml: receives the repository and commit as
# two separate arguments (never interpreted by a shell on the way in).
echo "on-push: repository=$1 commit=$2"
