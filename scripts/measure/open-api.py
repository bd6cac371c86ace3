#!/usr/bin/env python3
"""A 282 KB associate body (17,600 serial numbers) through the local API, without and with the API token; what the
daemon answers and how many Apple requests the simulator sees within 5 s, and the daemon's RSS.
Usage: open-api.py BINARY WORKDIR SIMPORT"""
import json, os, re, subprocess, sys, time, shutil, urllib.request
binary, work, simport = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.rmtree(work, ignore_errors=True)
sim = subprocess.Popen([binary, "sim", "--listen", f"127.0.0.1:{simport}", "--init", work],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
cfg = os.path.join(work, "config.toml")
for _ in range(100):
    if os.path.exists(cfg): break
    time.sleep(0.1)
time.sleep(0.5)
api = re.search(r'api_listen\s*=\s*"([^"]+)"', open(cfg).read()).group(1)
daemon = subprocess.Popen([binary, "--config", cfg, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def rss():
    for line in open(f"/proc/{daemon.pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 1024
def post(headers):
    body = json.dumps({"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}],
                       "serialNumbers": [f"SN{i:010d}" for i in range(17600)]}).encode()
    req = urllib.request.Request(f"http://{api}/v1/tokens/acme/requests/associate", data=body,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r: return r.status, len(body)
    except urllib.error.HTTPError as e: return e.code, len(body)
    except Exception as e: return str(e)[:60], len(body)
def apple_assoc():
    """Every numeric stat of the simulator whose key names an associate request, summed."""
    s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{simport}/_sim/stats"))
    return sum(v for k, v in _walk(s) if "associate" in k.lower())
def _walk(o, k=""):
    if isinstance(o, dict):
        for kk, v in o.items(): yield from _walk(v, kk)
    elif isinstance(o, (int, float)): yield (k, o)
for _ in range(100):
    try: urllib.request.urlopen(f"http://{api}/healthz", timeout=0.5); break
    except Exception: time.sleep(0.1)
time.sleep(1)
r0 = rss()
tok = os.path.join(work, "api-token")
status, size = post({"Content-Type": "text/plain"})
time.sleep(5)
print(f"no token, text/plain, {size} bytes: answered {status}; Apple associate requests after 5 s: {apple_assoc()}; RSS {r0:.1f} -> {rss():.1f} MiB")
if os.path.exists(tok):
    t = open(tok).read().strip()
    status, size = post({"Content-Type": "application/json", "Authorization": f"Bearer {t}"})
    time.sleep(2)
    print(f"with the token, application/json: answered {status}; Apple associate requests: {apple_assoc()}; RSS {rss():.1f} MiB")
daemon.terminate(); sim.terminate(); daemon.wait(); sim.wait()
