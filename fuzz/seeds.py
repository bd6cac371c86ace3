#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/: Apple's documented bodies as they appear
in tests/apple_contract.rs (extracted by line), plus the shapes the simulator (src/sim/) sends.
Run from the repository root: python3 fuzz/seeds.py"""
import base64, json, os, re, struct

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
src = open(os.path.join(root, "tests/apple_contract.rs")).read()
# Every raw string literal in the contract tests, keyed by the line it starts on.
bodies = {}
for m in re.finditer(r'b?r#"(.*?)"#', src, re.S):
    bodies[src[: m.start()].count("\n") + 1] = m.group(1)

def pick(pred):
    return [b for b in bodies.values() if pred(b)]

seeds = {t: [] for t in ["webhook", "service_config", "client_config", "assets_page",
         "assignments_page", "users_page", "event_status", "write_answer", "error_classify",
         "retry_after", "vpptoken", "config"]}
seeds["webhook"] = pick(lambda b: '"notificationId"' in b)
seeds["service_config"] = pick(lambda b: b.lstrip().startswith('{"limits"'))
seeds["client_config"] = pick(lambda b: '"countryISO2ACode"' in b) + ['{"uId":981060278089131045}']
seeds["assets_page"] = pick(lambda b: b.startswith('{"assets"'))
seeds["assignments_page"] = pick(lambda b: b.startswith('{"assignments"'))
seeds["users_page"] = pick(lambda b: b.startswith('{"users"'))
seeds["event_status"] = pick(lambda b: b.replace(' ', '').startswith('{"eventStatus"'))
seeds["write_answer"] = pick(lambda b: b.startswith('{"eventId"')) + ['{"uId":"1"}']

# The simulator's Service Config (src/sim/api.rs) and client config (same shapes).
base = "http://127.0.0.1:8080/mdm/v2/"
seeds["service_config"].append(json.dumps({
    "errorCodes": [{"errorNumber": n, "errorMessage": "m"} for n in (9601, 9621, 9646, 9709)],
    "limits": {"maxAssets": 25, "maxRequestPerSecond": 15, "maxUsers": 100},
    "notificationTypes": ["ASSET_COUNT", "ASSET_MANAGEMENT", "USER_MANAGEMENT"],
    "urls": {k: base + p for k, p in [("clientConfig", "client/config"), ("getAssets", "assets"),
             ("eventStatus", "status"), ("associateAssets", "assets/associate")]},
}))
seeds["client_config"].append(json.dumps({
    "countryISO2ACode": "US", "defaultPlatform": "volumestore", "locationName": "Sim",
    "mdmInfo": {"id": "m", "metadata": "x", "name": "MDM"}, "notificationAuthToken": "t",
    "notificationUrl": "https://mdm.example.com/apple/notify/acme",
    "subscribedNotificationTypes": ["ASSET_MANAGEMENT"],
    "tokenExpirationDate": "2030-11-08T22:33:22+0000", "uId": "2049025000431439",
    "websiteURL": "https://business.apple.com"}))
seeds["users_page"].append(json.dumps({
    "currentPageIndex": 0, "nextPageIndex": 1, "size": 2, "totalPages": 2, "versionId": "v1",
    "tokenExpirationDate": "2030-11-08T22:33:22+0000", "uId": "1",
    "users": [{"clientUserId": "u1", "status": "Retired"}, {"clientUserId": "u1", "status": "Associated"}]}))
seeds["assignments_page"].append(json.dumps({
    "currentPageIndex": "3", "totalPages": 9, "versionId": "v2",
    "assignments": [{"adamId": 408709785, "clientUserId": "u1"}, {"adamId": "1", "serialNumber": "s"}]}))

# error_classify: two bytes of HTTP status, one Retry-After byte (odd: present), the body.
def cls(status, body, retry=0):
    return struct.pack(">HB", status, retry) + body.encode()
err = [b for b in bodies.values() if b.lstrip().startswith('{     "errorNumber"')]
seeds["error_classify"] = [cls(400, e) for e in err] + [
    cls(200, '{"errorNumber":9622,"errorMessage":"Invalid authentication token"}'),
    cls(401, '{"errorNumber":9621,"errorMessage":"Token expired"}'),
    cls(429, '{"errorNumber":9646,"errorMessage":"Too many requests"}', 31),
    cls(503, '<html>Service Unavailable</html>', 5),
    cls(401, ''),
    cls(200, '{"failures":[{"errorNumber":9609}]}'),
    cls(400, '{"errorNumber":"9650","errorMessage":"Page index out of range"}'),
]
# retry_after: four bytes of "now" (2026-01-01), then the header value.
now = struct.pack(">I", 1767225600)
seeds["retry_after"] = [now + v.encode() for v in
    ["120", "0", "1.5", "-5", "soon", "Thu, 01 Jan 2026 00:00:30 GMT",
     "Wed, 31 Dec 2025 23:59:00 GMT", "999999"]]

def token(obj, wrap=0, pad=True):
    s = base64.b64encode(json.dumps(obj).encode()).decode()
    if not pad:
        s = s.rstrip("=")
    if wrap:
        s = "\n".join(s[i:i + wrap] for i in range(0, len(s), wrap)) + "\n"
    return s
seeds["vpptoken"] = [
    token({"token": "VGhpcyBpcyBhIHNhbXBsZSB0b2tlbg==", "expDate": "2030-11-08T22:33:22+0000", "orgName": "Acme School District"}),
    token({"token": "x", "expDate": "2020-01-01T00:00:00+0000", "orgName": "Expired"}, wrap=76),
    token({"token": "x", "expDate": "2030-11-08T22:33:22.123Z", "orgName": "RFC"}, pad=False),
    token({"token": "x", "expDate": "tomorrow", "orgName": "Bad date"}),
    token({"token": "PLANTED-SECRET-TOKEN"}),
]
seeds["config"] = [open(os.path.join(root, "config/vpp-reconciler.toml")).read(), """
[daemon]
database = "state.db"
api_listen = "127.0.0.1:8410"
log_level = "info,vpp_reconciler=debug"

[apple]
base_url = "http://127.0.0.1:9000/mdm/v2/"
request_timeout = "30s"
max_requests_per_second = 10

[webhook]
listen = "[::1]:8411"
path_prefix = "/apple/notify"
max_body_bytes = 1048576

[reconcile]
poll_min = "30s"
poll_max = "10m"
full_sync_schedule = "0 30 2 * * Sun"

[[tokens]]
name = "district-1"
token_file = "credentials/district-1.vpptoken"
notification_auth_token_file = "credentials/district-1.notify"
notification_url = "https://mdm.example.com/apple/notify/district-1"
max_requests_per_second = 5
"""]

for target, items in seeds.items():
    d = os.path.join(root, "fuzz/corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(items):
        data = s if isinstance(s, bytes) else s.encode()
        open(os.path.join(d, "seed-%02d" % i), "wb").write(data)
    print(target, len(items))
