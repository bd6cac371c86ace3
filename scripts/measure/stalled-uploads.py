#!/usr/bin/env python3
"""50 unauthenticated uploads stall mid-body at the webhook; the daemon's RSS before and
while they hang. Usage: stalled-uploads.py BINARY WORKDIR SIMPORT"""
import os, re, socket, subprocess, sys, time, shutil
binary, work, simport = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.rmtree(work, ignore_errors=True)
sim = subprocess.Popen([binary, "sim", "--listen", f"127.0.0.1:{simport}", "--init", work],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
cfg = os.path.join(work, "config.toml")
for _ in range(100):
    if os.path.exists(cfg): break
    time.sleep(0.1)
time.sleep(0.5)
text = open(cfg).read()
listen = re.search(r'\[webhook\][^\[]*?listen\s*=\s*"([^"]+)"', text, re.S)
prefix = re.search(r'path_prefix\s*=\s*"([^"]+)"', text)
host, port = (listen.group(1) if listen else "127.0.0.1:8788").rsplit(":", 1)
prefix = prefix.group(1) if prefix else "/apple/notifications"
daemon = subprocess.Popen([binary, "--config", cfg, "run"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
def rss():
    for line in open(f"/proc/{daemon.pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])
for _ in range(200):
    try:
        socket.create_connection((host, int(port)), timeout=0.2).close(); break
    except OSError: time.sleep(0.1)
time.sleep(2)
before = rss()
socks = []
chunk = b'{"a":"' + b"x" * (700 * 1024)
for _ in range(50):
    s = socket.create_connection((host, int(port)))
    s.sendall((f"POST {prefix}/acme HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: 1000000\r\n\r\n").encode())
    try:
        s.setblocking(False); s.send(chunk)
    except BlockingIOError: pass
    socks.append(s)
time.sleep(3)
during = rss()
answered = 0
for s in socks:
    try:
        if s.recv(64): answered += 1
    except (BlockingIOError, ConnectionResetError): pass
print(f"RSS before {before/1024:.1f} MiB, with 50 stalled unauthenticated uploads {during/1024:.1f} MiB "
      f"(+{(during-before)/1024:.1f} MiB); connections already answered: {answered}/50")
for s in socks: s.close()
daemon.terminate(); sim.terminate(); daemon.wait(); sim.wait()
