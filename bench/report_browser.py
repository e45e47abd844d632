"""A report's fronts.html in a real browser: headless Chromium driven over the DevTools
protocol (aiohttp's websocket client, which Ray installs). Prints the time from navigation to
the load event, then moves the mouse onto a front marker and prints the tooltip it shows.
Issue 20: a 10,000-trial report loads in <= 3 s and hovering a front point works.

    python -m reports build EXPERIMENT_DIR && python bench/report_browser.py file:///abs/EXPERIMENT_DIR/report/fronts.html

Needs ``chromium`` on PATH (Debian: ``apt-get install -y chromium``); not run by the suite.
"""
import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import aiohttp

URL = sys.argv[1]
PORT = 9333
proc = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={PORT}",
                         "--window-size=1400,1000", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json"))
        page = next(t for t in tabs if t["type"] == "page"); break
    except Exception:
        time.sleep(0.2)

async def main():
    async with aiohttp.ClientSession() as s, s.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
        n = 0
        async def call(method, **params):
            nonlocal n; n += 1; my = n
            await ws.send_json({"id": my, "method": method, "params": params})
            while True:
                msg = await ws.receive_json()
                if msg.get("id") == my:
                    return msg.get("result", msg)
        await call("Page.enable")
        t0 = time.perf_counter()
        await call("Page.navigate", url=URL)
        while True:
            msg = await ws.receive_json()
            if msg.get("method") == "Page.loadEventFired":
                break
        load_s = time.perf_counter() - t0
        print(f"load event after {load_s:.2f} s (navigation to load)")
        r = await call("Runtime.evaluate", returnByValue=True, expression="""(() => {
            const g = document.querySelector('g[id^="pt-accuracy_flops-t0"]'); g.scrollIntoView({block: 'center'});
            const b = g.getBoundingClientRect(); return [g.id, b.x + b.width / 2, b.y + b.height / 2,
            document.querySelectorAll('g[id^="pt-"]').length];})()""")
        gid, x, y, count = r["result"]["value"]
        print(f"{count} hoverable markers; moving onto {gid} at ({x:.0f}, {y:.0f})")
        await call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        await asyncio.sleep(0.3)
        r = await call("Runtime.evaluate", returnByValue=True,
                       expression="[getComputedStyle(document.getElementById('tip')).display, document.getElementById('tip').innerText]")
        shown, text = r["result"]["value"]
        print("tooltip:", json.dumps(text))
        print(f"RESULT report_browser.load_s = {load_s:.2f} (target <= 3): {'MEETS' if load_s <= 3 else 'MISSES'} target")
        ok = shown == "block" and gid.split("-")[-1] in text
        print(f"RESULT report_browser.hover_shows_trial = {ok} (target True): {'MEETS' if ok else 'MISSES'} target")

try:
    asyncio.run(main())
finally:
    proc.kill()
