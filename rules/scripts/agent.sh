#!/bin/sh
# Stands in for an agent CLI in rules/github.yaml (`agent-on-comment`): reads the prompt on
# stdin and answers with one JSON object on stdout, like `claude -p
# --output-format json`. On SIGTERM (a newer comment cancelled this run) it
# stops at once, as a real agent should after saving its work.
trap 'echo "agent: cancelled" >&2; exit 143' TERM
prompt=$(cat)
lines=$(printf '%s\n' "$prompt" | wc -l)
# A real agent works for minutes; a short pause keeps the example honest
# about cancellation without making it slow to try.
sleep "${AGENT_SECONDS:-2}" &
wait $!
question=$(printf '%s\n' "$prompt" | sed -n 's/.* asks: //p' | head -n 1 | tr -d '"\\')
printf '{"result": "Read %s lines of context. You asked: %s"}\n' "$lines" "$question"
