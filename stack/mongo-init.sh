# shellcheck shell=bash
# Creates the API's MongoDB user, readWrite on its database only, when the mongo image
# initialises an empty volume: the image's entrypoint sources every *.sh in
# /docker-entrypoint-initdb.d, after it has created the root user, with "${mongo[@]}" (mongosh
# on the temporary local server) and _js_escape defined. Its password comes from a secret
# file; it reaches mongosh on stdin, never a command line.
# shellcheck disable=SC2154  # mongo is the entrypoint's array
"${mongo[@]}" "${MONGO_APP_DB:-usersdb}" <<EOJS
db.getSiblingDB($(_js_escape "${MONGO_APP_DB:-usersdb}")).createUser({
  user: $(_js_escape "${MONGO_APP_USER:-usersapi}"),
  pwd: $(_js_escape "$(<"$MONGO_APP_PASSWORD_FILE")"),
  roles: [{role: 'readWrite', db: $(_js_escape "${MONGO_APP_DB:-usersdb}")}]
})
EOJS
