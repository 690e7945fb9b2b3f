"""Read the verifiable parts of the markdown pages; see the convention in `tests/test_docs.py`.

This module only parses and compares; starting nodes and running commands is the test's job.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.paths import ROOT

FENCE_RE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
VERIFY_WITH_RE = re.compile(r"<!--\s*verify-with:\s*(?P<names>[\w\-, ]+?)\s*-->")
LINK_RE = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN_RE = re.compile(r"(?<!`)`(?P<text>[^`\n]+)`(?!`)")
MAKE_RE = re.compile(r"(?:^|[\s;&|(])make (?:-\w+ )*(?:[A-Z_]+=\S+ )*(?P<target>[a-z][a-z0-9_-]*)", re.MULTILINE)
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ANY = "<any>"
ANY_LINES = "..."


@dataclass
class Fence:
    info: str
    text: str
    line: int  # 1-based line of the opening fence


@dataclass
class Check:
    """A `sh verify` block and, when the next block is `text expected`, its output."""

    command: str
    expected: str | None
    line: int


@dataclass
class Serve:
    """A `sh serve` block: what the learner leaves running in the first terminal."""

    command: str
    line: int


@dataclass
class Tab:
    """One line of a `text browser` block: a URL and the navbar fields its tab shows."""

    url: str
    fields: dict[str, str]
    line: int


@dataclass
class Terminal:
    """A `sh terminal` block: a command the learner starts in a terminal of its own and leaves running."""

    command: str
    line: int


Step = Check | Serve | Tab | Terminal


@dataclass
class Page:
    path: Path
    text: str
    fences: list[Fence] = field(default_factory=list)
    prose: str = ""  # the text outside fenced blocks

    @property
    def name(self) -> str:
        return self.path.relative_to(ROOT).as_posix() if self.path.is_relative_to(ROOT) else self.path.name

    @property
    def needs(self) -> list[str]:
        """What the page declares with `<!-- verify-with: stage1 -->`, in order."""
        names: list[str] = []
        for match in VERIFY_WITH_RE.finditer(self.text):
            names += [name.strip() for name in match["names"].split(",") if name.strip()]
        return names

    @property
    def steps(self) -> list[Step]:
        """What the test does for this page, in page order: start, run, look."""
        steps: list[Step] = []
        for i, fence in enumerate(self.fences):
            info = fence.info.split()
            if info == ["sh", "verify"]:
                following = self.fences[i + 1] if i + 1 < len(self.fences) else None
                expected = following.text if following and following.info.split() == ["text", "expected"] else None
                steps.append(Check(fence.text, expected, fence.line))
            elif info == ["sh", "serve"]:
                steps.append(Serve(fence.text.strip(), fence.line))
            elif info == ["sh", "terminal"]:
                steps.append(Terminal(fence.text.strip(), fence.line))
            elif info == ["text", "browser"]:
                lines = enumerate(fence.text.splitlines(), fence.line + 1)
                steps += [tab(line, number) for number, line in lines if line.strip()]
        return steps


FIELD_RE = re.compile(r"(?P<name>[a-z]+): (?P<value>.+?)(?= {2,}[a-z]+: |$)")


def tab(line: str, number: int) -> Tab:
    """`http://localhost:4000  self: a@localhost  nodes: [a@localhost]`: fields apart by two spaces."""
    url, _, rest = line.strip().partition(" ")
    fields = {match["name"]: match["value"] for match in FIELD_RE.finditer(rest.strip())}
    return Tab(url, fields, number)


def pages() -> list[Page]:
    """Every page the docs test covers: README.md, stage*/README.md, docs/*.md."""
    paths = [ROOT / "README.md", *sorted(ROOT.glob("stage*/README.md")), *sorted(ROOT.glob("docs/*.md"))]
    return [parse(path) for path in paths if path.is_file()]


def parse(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    page = Page(path, text)
    prose: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE_RE.match(lines[i])
        if opening is None:
            prose.append(lines[i])
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            # A block inside a list item is indented; its content is not (CommonMark).
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            j += 1
        page.fences.append(Fence(opening["info"].strip(), "\n".join(body) + "\n", i + 1))
        i = j + 1
    page.prose = "\n".join(prose)
    return page


def normalize(output: str) -> list[str]:
    """Output as a terminal shows it: no colour codes, no trailing spaces, no trailing blank lines."""
    lines = [line.rstrip() for line in ANSI_RE.sub("", output).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def line_pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in line.split(ANY)))


def matches(expected: str, actual: str) -> bool:
    """`actual` fits `expected`: a line `...` stands for any lines, `<any>` for any text within a line."""
    want, got = normalize(expected), normalize(actual)
    patterns = [None if line.strip() == ANY_LINES else line_pattern(line) for line in want]
    memo: dict[tuple[int, int], bool] = {}

    def fit(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(patterns):
                result = j == len(got)
            elif patterns[i] is None:
                result = any(fit(i + 1, k) for k in range(j, len(got) + 1))
            else:
                result = j < len(got) and patterns[i].fullmatch(got[j]) is not None and fit(i + 1, j + 1)
            memo[i, j] = result
        return memo[i, j]

    return fit(0, 0)


# Where a terminal's command listens: `PORT=4000` (not `CONSOLE_PORT=`), Redis's `port 6379`
# or `--port 6379`, Docker's `-p 127.0.0.1:4000:4000`.
LISTEN_RE = re.compile(r"(?:(?<![A-Z_])PORT=|(?:^|[\s'\"]|\\n|--)port |-p 127\.0\.0\.1:)(?P<port>\d+)")


def listening_ports(command: str) -> list[int]:
    """The ports a `sh terminal` command (as run) listens on, for the test to wait for."""
    return [int(match["port"]) for match in LISTEN_RE.finditer(command)]


def rewrite(command: str, replacements: dict[str, str]) -> str:
    """Replace every key at once, and only whole ports: `localhost:4000` but not `localhost:40001`."""
    if not replacements:
        return command
    pattern = re.compile("|".join(rf"{re.escape(old)}(?!\d)" for old in sorted(replacements, key=len, reverse=True)))
    return pattern.sub(lambda match: replacements[match[0]], command)


def relative_links(page: Page) -> list[str]:
    """Link targets in the prose that point into the repository (no scheme, no pure #anchor)."""
    targets = []
    for match in LINK_RE.finditer(page.prose):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def code_spans(page: Page) -> list[str]:
    return [match["text"].strip() for match in CODE_SPAN_RE.finditer(page.prose)]


def make_targets(page: Page) -> set[str]:
    """Targets named as `make <target>` in code spans and shell blocks (prose "make" is English)."""
    texts = [span for span in code_spans(page) if span.startswith("make ")]
    texts += [fence.text for fence in page.fences if fence.info.split()[:1] == ["sh"]]
    return {match["target"] for text in texts for match in MAKE_RE.finditer(text)}


PLACEHOLDER_CHARS = set("*?<>{}$=@…|")
FILE_NAME_RE = re.compile(r"^[\w.-]+\.[a-z]{1,5}$")


def repo_paths(page: Page) -> list[str]:
    """Words in code spans that name something in the repository, such as `shared/channel.py`.

    A word counts when its first part is an entry at the top of the repository (`shared/..`,
    `docs/..`, `pyproject.toml`, `.ci/run`); URL paths (`/api/nodes`), topics (`rooms:lobby`),
    names (`a@localhost`) and placeholders (`stageN_*/`) do not.
    """
    top = {entry.name for entry in ROOT.iterdir()}
    found = []
    for span in code_spans(page):
        for word in span.split():
            word = word.rstrip(".,;:)")
            # URL paths, options, home-relative and generated dot folders (`.venv`) are not ours.
            if not word or (word[0] in "/-~." and not word.startswith(".ci/")) or "://" in word:
                continue
            if PLACEHOLDER_CHARS & set(word):
                continue
            first = word.split("/", 1)[0]
            if first in top and ("/" in word or FILE_NAME_RE.match(word) or (ROOT / first).is_dir()):
                found.append(word)
    return found


# The Kubernetes lab by hand against `make stage3`'s plan ------------------------------
#
# Both are read as commands (argv lists), and each command that changes the cluster is
# reduced to what it does: the cluster it creates, the entry point it starts, the image
# it builds and loads, the Secrets it makes, the overlay it applies. Options, paths to
# kubectl, image tags and wording are left out, so that the two can be compared.

Effect = tuple[str, ...]


def commands(text: str) -> list[list[str]]:
    """Shell text as commands: continuation lines joined, comments dropped, pipes split."""
    found: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # a quote that the line does not close: not a command of ours
        command: list[str] = []
        for word in [*words, "|"]:
            if word in ("|", "&&", ";"):
                if command:
                    found.append(command)
                command = []
            else:
                command.append(word)
    return found


def lab_commands(page: Page, cluster: str) -> list[list[str]]:
    """The page's shell blocks for `cluster`: ```sh (every cluster) and ```sh <cluster>."""
    texts = [fence.text for fence in page.fences if fence.info.split() in (["sh"], ["sh", cluster])]
    return [command for text in texts for command in commands(text)]


def plan_commands(output: str) -> list[list[str]]:
    """What a dry run prints as `+ command` (as `set -x` does), with any trailing `# note`."""
    lines = [line[2:] for line in output.splitlines() if line.startswith("+ ")]
    return commands("\n".join(lines))


def effects(found: list[list[str]], output: str = "") -> list[Effect]:
    """What the commands change, in order, each once. `output` is the dry run's whole text,
    where an `apply -k .` names its overlay in the kustomization it prints."""
    result: list[Effect] = []
    for command in found:
        effect = effect_of([word.rsplit("/", 1)[-1] if i == 0 else word for i, word in enumerate(command)], output)
        if effect is not None and effect not in result:
            result.append(effect)
    return result


def option(command: list[str], *names: str) -> str | None:
    for i, word in enumerate(command):
        for name in names:
            if word == name and i + 1 < len(command):
                return command[i + 1]
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
    return None


def repository(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def effect_of(command: list[str], output: str) -> Effect | None:
    tool, args = command[0], command[1:]
    words = [word for word in args if not word.startswith("-")]
    if tool == "kind" and words[:2] == ["create", "cluster"]:
        return ("cluster", "kind", option(args, "--name") or "kind", option(args, "--config") or "")
    if tool == "minikube" and words[:1] == ["start"]:
        return ("cluster", "minikube", option(args, "--profile", "-p") or "minikube", option(args, "--cni") or "")
    if tool == "minikube" and words[:3] == ["addons", "enable", "ingress"]:
        return ("entry point", "minikube ingress addon")
    if tool == "docker" and words[:1] == ["run"] and any("cloud-controller-manager" in word for word in args):
        image = next(i for i, word in enumerate(args) if "cloud-controller-manager" in word)
        return ("entry point", *args[image:])  # the image and the options it is given
    if tool == "docker" and words[:1] == ["build"]:
        return ("build", option(args, "--file", "-f") or "Dockerfile", repository(option(args, "--tag", "-t") or ""))
    if tool == "kind" and words[:2] == ["load", "docker-image"]:
        return ("load", "kind", repository(words[2]), option(args, "--name") or "kind")
    if tool == "minikube" and words[:2] == ["image", "load"]:
        return ("load", "minikube", repository(words[2]), option(args, "--profile", "-p") or "minikube")
    if tool == "kubectl" and "secret" in args:
        after = args[args.index("secret") + 1 :]
        names = [word for word in after if not word.startswith("-") and word not in ("generic", "tls")]
        return ("secret", names[0]) if names else None
    if tool == "kubectl" and "apply" in args:
        target = option(args, "--kustomize", "-k")
        if target is None:
            return None  # `apply --filename -`: the Secrets, counted by name above
        overlay = re.search(r"k8s/overlays/(\w+)", target) or re.search(r"stage3_k8s/k8s/overlays/(\w+)", output)
        return ("apply", f"overlays/{overlay[1]}" if overlay else target)
    return None
