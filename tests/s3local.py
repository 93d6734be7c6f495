"""A local S3-compatible server (moto's server mode) on 127.0.0.1 for tests: started and stopped by them.

It runs in a child process: in the test's own process its request threads would fight the pipeline's
threads for the GIL and the measured run would mostly be the server's.
"""

import contextlib
import subprocess
import sys

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

_SERVER = """
import logging, sys, threading
logging.disable(logging.CRITICAL)
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
print(s.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test closes our stdin
s.stop()
"""


@contextlib.contextmanager
def s3_server():
    """Yield the endpoint URL of a fresh moto S3 server on a free port of 127.0.0.1."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def options(endpoint: str) -> dict:
    """fsspec/s3fs options for the local server."""
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
