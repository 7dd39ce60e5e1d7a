"""What a visitor waits for: `python app.py` to a served page, a Playground completion, one edit.

    .venv/bin/python bench/app_timings.py --runs 3 [--preset default] [--threads 1]

Starts ``python app.py`` on a free port with a fresh FTEDIT_HOME (warm: the converted model is
already cached), times the first HTTP 200 (the page is served while the model loads), the end
of the first ``/generate`` (the model is loaded and answering), then through gradio_client:
``/generate`` of 24 tokens (base and edited; median of ``--runs``), plain and chat, and one
``/edit`` with the preset (click to answer). ``--threads``: torch threads of the app (default:
its own, all cores, as a visitor's machine runs it). Prints medians; CPU contention from other
processes inflates them.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--preset", default="default")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the app's default)")
    a = p.parse_args(argv)
    port = _port()
    env = {**os.environ, "FTEDIT_HOME": tempfile.mkdtemp(prefix="ftedit-timing-")}
    env.pop("OMP_NUM_THREADS", None)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit("app.py exited before serving") from None
                time.sleep(0.1)
        served = time.perf_counter() - t0
        from gradio_client import Client

        c = Client(url, verbose=False)
        text = "The Eiffel Tower is located in the city of"

        def timed(*args, **kw):
            times = []
            for _ in range(a.runs):
                s = time.perf_counter()
                c.predict(*args, **kw)
                times.append(time.perf_counter() - s)
            return statistics.median(times)

        c.predict(text, 24, False, api_name="/generate")  # waits for the model to load
        ready = time.perf_counter() - t0
        plain = timed(text, 24, False, api_name="/generate")
        chat = timed("Where is the Eiffel Tower?", 24, True, api_name="/generate")
        s = time.perf_counter()
        c.predict(
            "{} is located in the city of",
            "The Eiffel Tower",
            "Rome",
            "Paris",
            a.preset,
            api_name="/edit",
        )
        edit = time.perf_counter() - s
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"torch threads: {a.threads or 'the app default (all cores)'}")
    print(f"python app.py to a served page: {served:.1f} s")
    print(f"python app.py to the first answer (model loaded): {ready:.1f} s")
    print(f"Playground, 24 tokens base + edited (median of {a.runs}): {plain:.2f} s")
    print(f"Playground chat, 24 tokens base + edited (median of {a.runs}): {chat:.2f} s")
    print(f"click to answer, one edit with preset {a.preset!r}: {edit:.1f} s")


if __name__ == "__main__":
    main()
