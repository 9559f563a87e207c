"""A local S3 endpoint (moto's server) for development and tests.

    with LocalS3() as s3:                      # 127.0.0.1 on a free port
        s3.create_bucket("data")
        spec.storage.endpoint_url = s3.endpoint_url

moto accepts any credentials, but the S3 clients still want some: `FAKE_CREDENTIALS` are set
in the environment by the caller (tests, infra/local_s3.sh), never written into a spec.
"""

from __future__ import annotations

import argparse
import socket
import time

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalS3:
    """moto's ThreadedMotoServer bound to one host and port, as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self._server = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalS3:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def create_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=name)

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a local S3 endpoint until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = parser.parse_args()
    with LocalS3(args.host, args.port) as s3:
        for bucket in args.bucket:
            s3.create_bucket(bucket)
        print(f"S3 endpoint {s3.endpoint_url}; buckets: {', '.join(args.bucket) or '(none)'}", flush=True)
        for key, value in FAKE_CREDENTIALS.items():
            print(f"export {key}={value}", flush=True)
        print(f"# in a job spec: storage: {{endpoint_url: {s3.endpoint_url}}}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
