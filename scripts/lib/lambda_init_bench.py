"""Cold-start benchmark of the Lambda functions: stripped binary size, init time
(process start to its first poll of the Lambda Runtime API) and peak memory.

A minimal Runtime API emulator on a loopback port records the first
`GET /2018-06-01/runtime/invocation/next`; the function is then stopped. Each
function starts RUNS times; the baseline is the same measurement of a process
that only starts and exits (/bin/true), run in the same script.
usage: lambda_init_bench.py BIN_DIR FUNCTION...   (env: RUNS, default 20)
"""

import http.server
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

GOAL_MB, GOAL_MS = 8.0, 20.0


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    polled = None  # threading.Event, set per run
    polled_at = 0.0

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.startswith("/2018-06-01/runtime/invocation/next"):
            RuntimeApi.polled_at = time.perf_counter()
            RuntimeApi.polled.set()
            time.sleep(5)  # hold the poll open; the function is stopped meanwhile
        elif self.path.startswith("/2020-01-01/extension/event/next"):
            time.sleep(5)  # an internal extension waits for its first event
        self.send_response(500)
        self.end_headers()

    def do_POST(self):  # noqa: N802
        # The Extensions API's register call, as Lambda answers it (the api
        # function registers an internal extension during init).
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.startswith("/2020-01-01/extension/register"):
            body = b'{"functionName":"bench","functionVersion":"$LATEST","handler":"bootstrap"}'
            self.send_response(200)
            self.send_header("Lambda-Extension-Identifier", "bench-extension")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


def peak_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measure(binary, port, env):
    RuntimeApi.polled = threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not RuntimeApi.polled.wait(10):
        proc.kill()
        raise SystemExit(f"{binary} never polled the Runtime API")
    init_ms = (RuntimeApi.polled_at - start) * 1000
    rss = peak_rss_mb(proc.pid)
    proc.kill()
    proc.wait()
    return init_ms, rss


def baseline_ms(runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main():
    bin_dir, functions = sys.argv[1], sys.argv[2:]
    runs = int(os.environ.get("RUNS", "20"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), RuntimeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}",
        AWS_LAMBDA_FUNCTION_NAME="bench",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
        RUST_LOG="warn",
    )
    base = baseline_ms(runs)
    print(f"{runs} cold starts each; baseline (spawn+exit of /bin/true): {base:.2f} ms median\n")
    print(f"{'function':<12} {'size MB':>8} {'init p50 ms':>12} {'init p90 ms':>12} {'peak RSS MB':>12} {'size/goal':>10} {'init/goal':>10} {'init/base':>10}")
    for name in functions:
        binary = os.path.join(bin_dir, name)
        size_mb = os.path.getsize(binary) / (1024 * 1024)
        results = [measure(binary, port, env) for _ in range(runs)]
        inits = sorted(r[0] for r in results)
        rss = max(r[1] for r in results)
        p50 = statistics.median(inits)
        p90 = inits[int(0.9 * (len(inits) - 1))]
        print(
            f"{name:<12} {size_mb:>8.2f} {p50:>12.2f} {p90:>12.2f} {rss:>12.1f} "
            f"{size_mb / GOAL_MB:>9.2f}x {p50 / GOAL_MS:>9.2f}x {p50 / base:>9.1f}x"
        )
    print(f"\ngoals: <= {GOAL_MB:.0f} MB, init <= {GOAL_MS:.0f} ms (ratios < 1 meet them)")
    server.shutdown()


if __name__ == "__main__":
    main()
