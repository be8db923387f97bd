"""Serve the `train` flow as the deployment `train/<name>` from this process.

    prefect server start                       # another terminal; then, here:
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipelines.flows.serve --name local
    prefect deployment run 'train/local' --param workspace=/abs/path/to/runs/a

No work pool or worker needed: this process polls the server and runs each flow run in a
subprocess. `prefect.yaml` describes the work-pool deployments (docs/orchestration.md).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.flows.settings import configure_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flows.serve", description=__doc__)
    parser.add_argument("--name", default="local", help="deployment name (default: local)")
    parser.add_argument(
        "--limit", type=int, default=1, help="flow runs at a time (default 1: one campaign per machine)"
    )
    args = parser.parse_args(argv)
    configure_environment()

    from prefect.settings import PREFECT_API_URL

    from pipelines.flows.train import train

    if not PREFECT_API_URL.value():
        print("PREFECT_API_URL is not set: start `prefect server start` and point it there", file=sys.stderr)
        return 2
    train.serve(name=args.name, limit=args.limit, tags=["delta-iris"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
