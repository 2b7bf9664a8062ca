"""A local S3-compatible endpoint on loopback for development and tests (moto's server mode).

    python infra/local/s3_server.py --port 0 --bucket vsae

prints one JSON line ``{"endpoint_url": ..., "bucket": ...}`` once the server accepts requests,
then serves until interrupted. Point clients at it with the standard AWS variables:

    export AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=testing \
           AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1

and use plain ``s3://vsae/...`` URIs. Data lives in memory and is gone when the server stops.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=args.region,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    for bucket in args.bucket or ["vsae"]:
        extra = {} if args.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": args.region}}
        s3.create_bucket(Bucket=bucket, **extra)
    print(json.dumps({"endpoint_url": endpoint, "buckets": args.bucket or ["vsae"],
                      "region": args.region}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
