"""Drive `jobwatch simulate` with the real, unchanged Python client (descarteslabs==1.0.0).

Checks that the simulator speaks the Vector API v2 contract of UPSTREAM.md well enough for the
client's own copy and delete jobs and their wait_for_completion, including the failure paths.

How to run (descarteslabs 1.0.0 pins packages that no longer build on Python 3.11, e.g.
pyarrow 0.13 and cloudpickle 0.4; the vector client does not need them):

    python3 -m venv /tmp/dlvenv
    /tmp/dlvenv/bin/pip install --no-deps descarteslabs==1.0.0
    /tmp/dlvenv/bin/pip install requests six cachetools geojson pytz shapely cloudpickle \
        "protobuf==3.8.0" "urllib3<2"
    jobwatch simulate --listen 127.0.0.1:9090 --min-running 1s --max-running 2s \
        --token "$(/tmp/dlvenv/bin/python tests/real_client/drive_simulator.py --print-token)" &
    /tmp/dlvenv/bin/python tests/real_client/drive_simulator.py --url http://127.0.0.1:9090

It exits 0 when every check passed (about 10 s with the running times above).
"""

import argparse
import base64
import json
import os
import sys
import time
import warnings


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt():
    """A three-part JWT whose payload has a far-future exp; the client never checks the signature."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "simulator", "exp": 4102444800}).encode())
    return "{}.{}.{}".format(header, payload, b64url(b"not-a-signature"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    parser.add_argument("--print-token", action="store_true", help="print the JWT and exit")
    parser.add_argument("--poll-interval", type=float, default=0.5,
                        help="the client's COMPLETION_POLL_INTERVAL_SECONDS (5 by default)")
    args = parser.parse_args()
    token = fake_jwt()
    if args.print_token:
        print(token)
        return 0

    # FeatureCollection.delete_features() builds its DeleteJob with a default client, which
    # reads these.
    os.environ["DESCARTESLABS_VECTOR_URL"] = args.url
    os.environ["DESCARTESLABS_TOKEN"] = token
    # The 1.0.0 client uses urllib3 APIs that warn on every session.
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    from descarteslabs.client.auth import Auth
    from descarteslabs.client.exceptions import BadRequestError, NotFoundError
    from descarteslabs.client.services.vector import Vector
    from descarteslabs.vectors import FeatureCollection
    from descarteslabs.vectors.async_job import AsyncJob, CopyJob, DeleteJob
    from descarteslabs.vectors.exceptions import FailedJobError

    AsyncJob.COMPLETION_POLL_INTERVAL_SECONDS = args.poll_interval
    vector = Vector(url=args.url, auth=Auth(jwt_token=token, token_info_path=None))
    failures = []

    def check(name, fn, expect=None):
        started = time.time()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - we report whatever the client raised
            if expect is not None and isinstance(e, expect):
                print("ok   {} raised {} ({:.1f}s)".format(name, type(e).__name__, time.time() - started))
            else:
                failures.append(name)
                print("FAIL {}: {}: {}".format(name, type(e).__name__, e))
            return
        if expect is None:
            print("ok   {} ({:.1f}s)".format(name, time.time() - started))
        else:
            failures.append(name)
            print("FAIL {}: expected {}".format(name, expect.__name__))

    source = FeatureCollection("myorg:source", vector_client=vector)

    def copy_succeeds():
        fc = source.copy("succeed-copy-{}".format(os.getpid()), "A copy", "copied by the simulator")
        assert fc.id.startswith("succeed-copy-"), fc.id
        fc.wait_for_copy(timeout=30)

    def delete_succeeds():
        fc = FeatureCollection("done-delete-{}".format(os.getpid()), vector_client=vector)
        job = fc.delete_features()
        job.wait_for_completion(timeout=30)
        assert job.state == "DONE", job.state
        assert job.ended is not None

    def copy_with_errors():
        source.copy("successerr-copy-{}".format(os.getpid()), "t", "d").wait_for_copy(timeout=30)

    def delete_failure():
        FeatureCollection("failure-del-{}".format(os.getpid()), vector_client=vector) \
            .delete_features().wait_for_completion(timeout=30)

    def copy_job_object():
        job = CopyJob("doneerr-x-{}".format(os.getpid()), vector)
        job.wait_for_completion(timeout=30)

    check("copy job succeeds", copy_succeeds)
    check("delete job succeeds", delete_succeeds)
    check("copy job SUCCESS with errors", copy_with_errors, FailedJobError)
    check("delete job FAILURE", delete_failure, FailedJobError)
    check("copy job DONE with errors", copy_job_object, FailedJobError)
    check("unknown product", lambda: FeatureCollection("notfound-x", vector_client=vector), NotFoundError)
    check("job that cannot begin", lambda: DeleteJob("badrequest-x", vector).refresh(), BadRequestError)
    check("status of an unknown job", lambda: CopyJob("notfound-y", vector).refresh(), NotFoundError)

    print("{} failed".format(len(failures)) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
