"""Stage 3 on a local Kubernetes: what `make stage3`, `stage3-scale`, `stage3-status` and `stage3-down` run.

    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] up
    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] scale --replicas 10
    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] status
    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] down

`up` does what the original's third stage did by hand: a cluster with an entry point
(Gateway API on kind, served by cloud-provider-kind; minikube's ingress addon), the
image built and loaded into it, the manifests applied. Then it checks what the lesson
claims: every pod lists every other pod in GET /api/nodes, a message sent to one pod
reaches a user of another, and http://test.com answers through the entry point, page
and WebSocket both.

Everything it makes is named `chatlab` (the kind cluster or minikube profile, the
kubectl context it implies, the namespace, the image), so `down` removes exactly that
and kubectl never touches another cluster of yours.

Each action is one list of steps. --dry-run walks the same list with a Shell that
prints each command and runs none of them, not even the read-only ones: it shows a
first run on a machine without the cluster. Values only known at run time appear as
<placeholders>.

The modules, in the order an action needs them: `config` (names, paths, timeouts),
`shell` (commands, steps, tools), `machine` (what `up` checks first), `clusters` (kind,
minikube), `build`, `resources`, `pods`, `proofs`, `actions`, and `__main__` (the
command line).

This tool runs on your machine, not in the image (.dockerignore keeps it out).
"""
