"""`up`, `scale`, `status` and `down`: each one list of steps that a real run and a dry run both walk."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from stage3_k8s.deploy.build import image_tag
from stage3_k8s.deploy.clusters import Cluster
from stage3_k8s.deploy.config import (
    APPLY_ATTEMPTS,
    DEFAULT_REPLICAS,
    DOCKERFILE,
    HOST_NAME,
    IMAGE,
    NAME,
    NAMESPACE,
    NAMESPACE_FILE,
    OVERLAYS,
    PORT,
    ROOT,
    SECRETS,
)
from stage3_k8s.deploy.machine import Findings
from stage3_k8s.deploy.pods import (
    Pod,
    chat_pods,
    check_capacity,
    current_replicas,
    node_view,
    rollout,
    wait_one_cluster,
)
from stage3_k8s.deploy.proofs import prove_entry, prove_message_crosses
from stage3_k8s.deploy.resources import secret_objects, secrets_to_create, tagged_overlay
from stage3_k8s.deploy.shell import Step, StepFailed, rel, say, shown, walk


@dataclass
class Up:
    cluster: Cluster
    tag: str = field(default_factory=image_tag)
    pods: list[Pod] = field(default_factory=list)
    entry: tuple[str, int] = ("<entry>", 80)

    @property
    def image(self) -> str:
        return f"{IMAGE}:{self.tag}"

    def steps(self) -> list[Step]:
        c = self.cluster
        return [
            Step(f"this machine: {c.k8s}'s version, Docker's memory, other clusters", self.check_machine),
            Step(f"cluster: {c.k8s} `{NAME}` (context {c.context})", c.ensure),
            Step(f"entry point: {c.entry_name}", c.install_entry),
            Step(f"image {self.image} (a few minutes the first time, seconds after)", self.build),
            Step(f"loading {self.image} into the cluster", lambda: c.load(self.image)),
            Step(f"secrets: {', '.join(f'{NAMESPACE}/{name}' for name in SECRETS)}", self.secrets),
            Step(f"applying k8s/overlays/{c.k8s} with image {self.image}", self.apply),
            Step("waiting for the rollout", self.wait_rollout),
            Step("proving the pods are one cluster: each lists all, and a message crosses", self.prove_cluster),
            Step(f"proving http://{HOST_NAME} works through the entry point", self.prove_entry),
        ]

    def check_machine(self) -> None:
        findings = Findings()
        self.cluster.check_machine(findings)
        for warning in findings.warnings:
            say(f"    ! {warning}")
        if findings.problems:
            raise StepFailed("this machine is not ready:\n" + "\n".join(f"  - {p}" for p in findings.problems))
        say("    ok" if not findings.warnings else "    going on")

    def build(self) -> None:
        self.cluster.shell.run(["docker", "build", "--file", rel(DOCKERFILE), "--tag", self.image, rel(ROOT) or "."])

    def secrets(self) -> None:
        c = self.cluster
        missing = secrets_to_create(c)
        for name in SECRETS:
            if name not in missing:
                # Earlier versions of this lab applied the Secrets, which copied each value
                # into this annotation; harmless when it is not there.
                c.shell.run(
                    c.kubectl("annotate", "secret", name, "kubectl.kubernetes.io/last-applied-configuration-"),
                    check=False,
                    note="no copy of the value in an annotation",
                )
        if missing:
            c.shell.run(c.kubectl("apply", "--filename", rel(NAMESPACE_FILE), namespace=None))
            # Created, not applied: `kubectl apply` would copy each Secret, value included,
            # into its last-applied-configuration annotation, readable wherever the object is.
            c.shell.run(
                c.kubectl("create", "--filename", "-"),
                note=f"stdin: new random {', '.join(missing)}, not shown",
                stdin=secret_objects({name: secrets.token_urlsafe(32) for name in missing}),
            )

    def apply(self) -> None:
        c = self.cluster
        replicas = current_replicas(c)
        if replicas is not None and replicas != DEFAULT_REPLICAS:
            say(
                f"    keeping {replicas} chat pods (as scaled);"
                f" `make stage3-scale REPLICAS={DEFAULT_REPLICAS}` goes back"
            )
        keep = replicas if replicas is not None and replicas != DEFAULT_REPLICAS else None
        patches = c.overlay_patches()
        with tagged_overlay(OVERLAYS / c.k8s, self.tag, replicas=keep, patches=patches) as workdir:
            text = (workdir / "kustomization.yaml").read_text()
            say("  # <workdir>/kustomization.yaml:\n" + "\n".join(f"  #   {line}" for line in text.splitlines()))
            c.shell.run(
                c.kubectl("apply", "--kustomize", "."),
                note="in <workdir>",
                attempts=APPLY_ATTEMPTS,
                cwd=workdir,
            )

    def wait_rollout(self) -> None:
        rollout(self.cluster, "statefulset/redis")
        rollout(self.cluster, "deployment/chat")
        self.cluster.wait_entry()

    def prove_cluster(self) -> None:
        self.pods = wait_one_cluster(self.cluster)
        prove_message_crosses(self.cluster, self.pods)

    def prove_entry(self) -> None:
        self.entry = prove_entry(self.cluster)

    def run(self) -> None:
        if self.cluster.notice():
            say(self.cluster.notice())
        walk(self.steps())
        say("")
        if self.cluster.shell.dry_run:
            say("Dry run: nothing was run. When it runs, it ends with:")
        say(f"Done: {len(self.pods) or 'the'} chat pods on {self.cluster.k8s}, one cluster.")
        for line in self.cluster.url_help(self.entry):
            say("  " + line)
        say(
            "  A tab's `self:` is the pod that served its page; its socket may be on another (the entry point"
            " balances each connection): the messages you send show the pod they were pushed on."
            " `make stage3-status` lists every pod."
        )


def scale(cluster: Cluster, replicas: int) -> None:
    shell = cluster.shell
    walk(
        [
            Step(f"checking the nodes have room for {replicas} chat pods", lambda: check_capacity(cluster, replicas)),
            Step(
                f"scaling deployment/chat to {replicas}",
                lambda: shell.run(cluster.kubectl("scale", "deployment/chat", f"--replicas={replicas}")),
            ),
            Step("waiting for the rollout", lambda: rollout(cluster, "deployment/chat")),
            Step(
                f"waiting until each of the {replicas} pods lists all {replicas}",
                lambda: wait_one_cluster(cluster, replicas),
            ),
        ]
    )
    say(("Dry run: nothing was run. " if shell.dry_run else "") + f"Done: {replicas} chat pods, one cluster.")


def status(cluster: Cluster) -> None:
    shell = cluster.shell
    say(f"== chat pods ({cluster.context})")
    shell.run(cluster.kubectl("get", "pods", "--selector", "app=chat", "--output", "wide"), check=False)
    say("== endpoints of the headless Service chat-nodes (what DNS answers)")
    shell.run(
        cluster.kubectl("get", "endpointslices", "--selector", "kubernetes.io/service-name=chat-nodes"), check=False
    )
    say("== each pod's GET /api/nodes")
    pods = chat_pods(cluster)
    if shell.dry_run:
        raw = f"/api/v1/namespaces/{NAMESPACE}/pods/<pod>:{PORT}/proxy/api/nodes"
        say("+ " + shown(cluster.kubectl("get", "--raw", raw, namespace=None)) + "  # for each pod")
    expected = {pod.node for pod in pods}
    for pod in pods:
        view = node_view(cluster, pod)
        mark = "ok" if view is not None and set(view) == expected else "differs"
        say(f"  {pod.name} {pod.node}: {', '.join(view) if view is not None else '(no answer)'}  [{mark}]")
    if not pods:
        say("  (no running chat pods)")


def down(cluster: Cluster) -> None:
    shell = cluster.shell

    def images() -> None:
        listed = shell.query(
            ["docker", "image", "ls", IMAGE, "--format", "{{.Repository}}:{{.Tag}}"],
            assume=f"it lists {IMAGE}:<tag>",
            dry=(0, f"{IMAGE}:<tag>"),
        )
        found = listed.stdout.split()
        if found:
            shell.run(["docker", "image", "rm", *found])
        else:
            say("    none")

    walk(
        [
            Step(f"deleting the {cluster.k8s} cluster `{NAME}`", cluster.delete),
            Step(f"removing the {IMAGE} images", images),
        ]
    )
