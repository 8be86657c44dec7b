#!/bin/sh
# A fake `claude -p --output-format stream-json --verbose` for tests (busybox sh).
#
# Reads the prompt from stdin, then replays a real recorded run from /samples/NAME.jsonl
# and exits with the code the real CLI would have (1 when the result has is_error).
# Settings come from the environment, overridden by a prompt line such as
#     fake-claude: scenario=tool-run-success delay=0.2 hang=1
#   scenario=NAME   sample to replay (FAKE_CLAUDE_SCENARIO; default tool-run-success);
#                   "none" prints nothing
#   delay=SECONDS   pause before each line (FAKE_CLAUDE_DELAY)
#   hang=1          replay all but the result line, start a child in its own session
#                   (like a Bash-tool child), then wait forever: SIGTERM → exit 143
#   hang-once=1     hang on the task's first run only (a marker file in $HOME remembers),
#                   replay normally on the next: a crash-and-resume in one directive
#   ignore-term=1   ...and ignore SIGTERM, so only SIGKILL stops it
#   limit-once=SECONDS  end the task's first run on a Claude usage limit that resets
#                   SECONDS from now (samples/usage-limit-5h-rejected.jsonl, a 2.1.x
#                   capture, with its resetsAt moved), replay normally on the next
#   lines=N         print N synthetic assistant lines as fast as possible, then a result
#   exit=N          exit with N instead
#   run=BASE64      run the base64-encoded shell command, as a prompt-injected Claude
#                   would with its Bash tool, and reply with what it printed (the
#                   assistant's text and the result); the delay comes first
# With FAKE_CLAUDE_RECORD=DIR it writes its argv (one per line), prompt and env there.

prompt=$(cat)

scenario=${FAKE_CLAUDE_SCENARIO:-tool-run-success}
delay=${FAKE_CLAUDE_DELAY:-0}
hang=${FAKE_CLAUDE_HANG:-0}
ignore_term=0
hang_once=0
limit_once=0
lines=0
exit_code=
run=

directive=$(printf '%s\n' "$prompt" | grep -m1 '^fake-claude:' | cut -d: -f2-)
for setting in $directive; do
    case $setting in
        scenario=*) scenario=${setting#*=} ;;
        delay=*) delay=${setting#*=} ;;
        hang=*) hang=${setting#*=} ;;
        hang-once=*) hang_once=${setting#*=} ;;
        limit-once=*) limit_once=${setting#*=} ;;
        ignore-term=*) ignore_term=${setting#*=} ;;
        lines=*) lines=${setting#*=} ;;
        exit=*) exit_code=${setting#*=} ;;
        run=*) run=${setting#*=} ;;
    esac
done

if [ -n "${FAKE_CLAUDE_RECORD:-}" ]; then
    mkdir -p "$FAKE_CLAUDE_RECORD"
    printf '%s\n' "$@" >"$FAKE_CLAUDE_RECORD/argv"
    printf '%s' "$prompt" >"$FAKE_CLAUDE_RECORD/prompt"
    env >"$FAKE_CLAUDE_RECORD/env"
fi

case " $* " in
    *" --verbose "*) ;;
    *)
        echo "Error: When using --print, --output-format=stream-json requires --verbose" >&2
        exit 1
        ;;
esac

echo "fake-claude: scenario=$scenario pid=$$" >&2

emit() {  # emit FILE [SKIP-PATTERN]: print the file's lines, with the delay between them
    skip=${2:-'^$'}
    if [ "$delay" = 0 ]; then
        grep -v "$skip" "$1"
        return 0
    fi
    grep -v "$skip" "$1" | while IFS= read -r line; do
        sleep "$delay"
        printf '%s\n' "$line"
    done
}

json_string() {  # stdin → one JSON string literal (newlines, quotes, backslashes escaped)
    awk 'BEGIN { ORS = ""; printf "\"" }
        { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); gsub(/\r/, "\\r")
          if (NR > 1) printf "\\n"; printf "%s", $0 }
        END { printf "\"" }'
}

if [ -n "$run" ]; then
    [ "$delay" = 0 ] || sleep "$delay"
    text=$(printf '%s' "$run" | base64 -d | sh 2>&1 | json_string)
    printf '{"type":"assistant","message":{"id":"msg_fake","type":"message","role":"assistant","content":[{"type":"text","text":%s}]},"session_id":"fake-session"}\n' "$text"
    printf '{"type":"result","subtype":"success","is_error":false,"result":%s,"num_turns":1,"session_id":"fake-session","terminal_reason":"completed"}\n' "$text"
    exit "${exit_code:-0}"
fi

if [ "$lines" -gt 0 ]; then
    awk -v n="$lines" 'BEGIN {
        for (i = 1; i <= n; i++)
            printf "{\"type\":\"assistant\",\"message\":{\"id\":\"msg_fake\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"line %d\"}]},\"session_id\":\"fake-session\"}\n", i
        print "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"done\",\"num_turns\":1,\"session_id\":\"fake-session\",\"terminal_reason\":\"completed\"}"
    }'
    exit "${exit_code:-0}"
fi

samples=${FAKE_CLAUDE_SAMPLES:-/samples}
sample=$samples/$scenario.jsonl
if [ "$scenario" != none ] && [ ! -f "$sample" ]; then
    echo "fake-claude: no sample named $scenario in $samples" >&2
    exit 2
fi

if [ "$hang_once" = 1 ]; then
    marker="${HOME:-/tmp}/.fake-claude-hung-${CLAUDE_HOOKS_TASK:-0}"
    if [ ! -e "$marker" ]; then
        : >"$marker"
        hang=1
    fi
fi

if [ "$limit_once" != 0 ]; then
    marker="${HOME:-/tmp}/.fake-claude-limited-${CLAUDE_HOOKS_TASK:-0}"
    if [ ! -e "$marker" ]; then
        : >"$marker"
        resets=$(($(date +%s) + limit_once))
        sed "s/\"resetsAt\":[0-9]*/\"resetsAt\":$resets/" "$samples/usage-limit-5h-rejected.jsonl"
        exit 1
    fi
fi

if [ "$hang" = 1 ]; then
    [ "$ignore_term" = 1 ] && trap '' TERM
    [ "$scenario" = none ] || emit "$sample" '"type":"result"'
    # Its own session and no shared stdout, like a Bash-tool child of the real CLI.
    setsid sleep 1000 </dev/null >/dev/null 2>&1 &
    exec sleep 1000
fi

if [ "$scenario" = none ]; then
    echo "fake-claude: exiting without output" >&2
    exit "${exit_code:-1}"
fi

emit "$sample"
if [ -z "$exit_code" ]; then
    exit_code=0
    grep '"type":"result"' "$sample" | grep -q '"is_error":true' && exit_code=1
fi
exit "$exit_code"
