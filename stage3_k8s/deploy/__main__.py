"""`python -m stage3_k8s.deploy`: the command line of `make stage3`, `stage3-scale`, `-status`, `-down`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from stage3_k8s.deploy.actions import Up, down, scale, status
from stage3_k8s.deploy.clusters import CLUSTERS
from stage3_k8s.deploy.shell import Shell, StepFailed, prerequisites, say, tools_for


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stage3_k8s.deploy", description="Stage 3 on kind or minikube.")
    parser.add_argument(
        "--k8s", choices=("kind", "minikube"), default="kind", help="the local Kubernetes (default: kind)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands in order, run none")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("up", help="cluster, entry point, image, manifests; then prove the pods are one cluster")
    scaler = actions.add_parser("scale", help="scale the chat and wait until every pod sees all the others")
    scaler.add_argument("--replicas", type=int, required=True)
    actions.add_parser("status", help="pods, endpoints of chat-nodes, each pod's node list")
    actions.add_parser("down", help="delete the cluster and the images")
    args = parser.parse_args(argv)
    if args.action == "scale" and not 1 <= args.replicas <= 50:
        parser.error("--replicas must be between 1 and 50")
    return args


def run(args: argparse.Namespace) -> int:
    cluster = CLUSTERS[args.k8s](Shell(args.dry_run))
    needed = tools_for(args.k8s, args.action)
    problems = prerequisites(args.k8s, args.action, cluster.shell)
    if args.dry_run:
        found = "all found here" if not problems else "; ".join(problems).replace("\n", "\n# ")
        say(f"# dry run of `{args.action}` on {args.k8s}, which needs {', '.join(needed)}: {found}")
    elif problems:
        say(f"stage 3 on {args.k8s} needs {', '.join(needed)} and a running Docker; " + "\n".join(problems))
        return 2
    if args.action in ("scale", "status") and not cluster.has_context():
        say(f"no stage 3 cluster here (no kubectl context {cluster.context}): run `make stage3 K8S={args.k8s}` first")
        return 2
    try:
        if args.action == "up":
            Up(cluster).run()
        elif args.action == "scale":
            scale(cluster, args.replicas)
        elif args.action == "status":
            status(cluster)
        else:
            down(cluster)
    except StepFailed as failure:
        say(f"stage 3 stopped: {failure}")
        return 1
    except KeyboardInterrupt:
        say("stage 3 interrupted")
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except BrokenPipeError:
        # The reader left (`... DRY_RUN=1 | head`): stop quietly, and keep Python's exit-time
        # flush of stdout from raising the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
