#!/bin/sh
# A harmless example hook: prints what cmqhook handed it and exits 0.
echo "hook ${CMQHOOK_HOOK} got message ${CMQ_MSG_ID} (topic '${CMQ_TOPIC}', tags '${CMQ_TAGS}', attempt ${CMQHOOK_ATTEMPT})"
printf 'body: '
cat
echo
