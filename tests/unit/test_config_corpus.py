"""Hostile stack configurations, one group per class of hole issue 12 found, and the
valid forms the documentation promises.

Each bad case names the key path(s) it must be reported at and a fragment of what is
allowed. Every case is also held to the properties every problem line must have: a
ConfigError (never another exception), each line naming a ``dockyard:`` key and an
``(allowed: …)`` form, no Python wording, no canary secret, no control character.
"""

from __future__ import annotations

import datetime
import math
import re
from pathlib import Path
from typing import Any

import pytest

from dockyard.config import ConfigError, StackConfig, from_stack_file, parse

CWD = "/home/u/project"
E = "dockyard:environments[0]"
CANARY = "c4n4ry"
PYTHON_WORDING = re.compile(
    r"invalid literal|Input should|Traceback|Value error|object has no attribute|could not "
    r"convert|unhashable|OverflowError|not JSON serializable|pydantic|errors\.pydantic",
)


def env(**fields: Any) -> dict[str, Any]:
    return {"dockyard:environments": [{"sessionId": "s1", **fields}]}


def two(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {"dockyard:environments": [first, second]}


# (class, name, raw config, [(key path, fragment of the line)])
Case = tuple[str, str, dict[str, Any], list[tuple[str, str]]]

SPELLING: list[Case] = [
    (
        "spelling",
        "workspace_host_path to the engine state",
        env(workspace_host_path="/var/lib/docker"),
        [(f"{E}.workspace_host_path", "did you mean workspaceHostPath?")],
    ),
    (
        "spelling",
        "two environments with session_id",
        two({"session_id": "a"}, {"session_id": "a"}),
        [
            (f"{E}.sessionId", "missing"),
            (f"{E}.session_id", "did you mean sessionId?"),
            ("dockyard:environments[1].sessionId", "missing"),
            ("dockyard:environments[1].session_id", "did you mean sessionId?"),
        ],
    ),
    (
        "spelling",
        "egress_allow",
        env(egress="allowlist", egress_allow=["github"]),
        [(f"{E}.egress_allow", "did you mean egressAllow?")],
    ),
    (
        "spelling",
        "nofile_soft in limits",
        env(limits={"nofile_soft": 99999}),
        [(f"{E}.limits.nofile_soft", "did you mean nofileSoft?")],
    ),
    (
        "spelling",
        "start_period in healthcheck",
        {"dockyard:healthcheck": {"start_period": "1s"}},
        [("dockyard:healthcheck.start_period", "did you mean startPeriod?")],
    ),
    (
        "spelling",
        "bind_roots at the top",
        {"dockyard:bind_roots": ["/"]},
        [("dockyard:bind_roots", "did you mean bindRoots?")],
    ),
    (
        "spelling",
        "docker_host at the top",
        {"dockyard:docker_host": "tcp://h:1"},
        [("dockyard:docker_host", "did you mean dockerHost?")],
    ),
    (
        "spelling",
        "gpu_image",
        {"dockyard:gpu_image": {"ref": "x/y"}},
        [("dockyard:gpu_image", "did you mean gpuImage?")],
    ),
    (
        "spelling",
        "SessionID capitalised",
        {"dockyard:environments": [{"SessionID": "a"}]},
        [(f"{E}.SessionID", "did you mean sessionId?"), (f"{E}.sessionId", "missing")],
    ),
    (
        "spelling",
        "read_only is not a key of anything",
        {"dockyard:image": {"build_args": {"A": "1"}}},
        [("dockyard:image.build_args", "unknown key")],
    ),
]

PATTERNS: list[Case] = [
    (
        "patterns",
        "session id + newline",
        env(sessionId="s1\n"),
        [(f"{E}.sessionId", "container name")],
    ),
    (
        "patterns",
        "session id Arabic digit",
        env(sessionId="s\u0661"),
        [(f"{E}.sessionId", "container name")],
    ),
    (
        "patterns",
        "env name + newline",
        env(env={"NAME\n": "x"}),
        [(f"{E}.env.<key 1>", "variable name")],
    ),
    (
        "patterns",
        "volume name + newline",
        env(volumes=["cache\n:/c"]),
        [(f"{E}.volumes[0]", "host:container")],
    ),
    (
        "patterns",
        "label key + newline",
        env(labels={"team\n": "x"}),
        [(f"{E}.labels.<key 1>", "label key")],
    ),
    (
        "patterns",
        "dockerHost + newline",
        {"dockyard:dockerHost": "unix:///var/run/docker.sock\n"},
        [("dockyard:dockerHost", "Docker host URL")],
    ),
    (
        "patterns",
        "memory Arabic digits",
        env(limits={"memory": "\u0668g"}),
        [(f"{E}.limits.memory", "6 MB to 4 TiB")],
    ),
    (
        "patterns",
        "cpus Devanagari digit",
        env(limits={"cpus": "\u0968"}),
        [(f"{E}.limits.cpus", "0.01 to 1024")],
    ),
    (
        "patterns",
        "duration Arabic digits",
        {"dockyard:healthcheck": {"interval": "\u0661\u0660s"}},
        [("dockyard:healthcheck.interval", "1ms to 24h")],
    ),
    (
        "patterns",
        "egress port Arabic digits",
        env(egress="allowlist", egressAllow=["example.com:\u0664\u0664\u0663"]),
        [(f"{E}.egressAllow[0]", "preset")],
    ),
    (
        "patterns",
        "label value escape sequence",
        env(labels={"a": "x\x1b[31m"}),
        [(f"{E}.labels.a", "no control")],
    ),
    (
        "patterns",
        "label value carriage return",
        env(labels={"a": "x\ry"}),
        [(f"{E}.labels.a", "no control")],
    ),
    ("patterns", "env value NUL", env(env={"A": "x\x00y"}), [(f"{E}.env.A", "no control")]),
    (
        "patterns",
        "cwd with a tab",
        {"dockyard:cwd": "/srv/a\tb"},
        [("dockyard:cwd", "control characters")],
    ),
    (
        "patterns",
        "manifestDir with CR",
        {"dockyard:manifestDir": "a\rb"},
        [("dockyard:manifestDir", "control")],
    ),
    (
        "patterns",
        "bindRoots with DEL",
        {"dockyard:bindRoots": ["/srv/\x7f"]},
        [("dockyard:bindRoots[0]", "control")],
    ),
    (
        "patterns",
        "workspaceHostPath with C1 control",
        env(workspaceHostPath=CWD + "/w\x85"),
        [(f"{E}.workspaceHostPath", "control")],
    ),
    (
        "patterns",
        "image ref + newline",
        env(image="ghcr.io/a/b\n"),
        [(f"{E}.image", "image reference")],
    ),
    (
        "patterns",
        "profile name + newline",
        {"dockyard:profile": "large\n"},
        [("dockyard:profile", "profile name")],
    ),
]

PATHS: list[Case] = [
    (
        "paths",
        "//-prefixed engine socket",
        env(volumes=["//var/run/docker.sock:/sock"]),
        [(f"{E}.volumes[0]", "socket or state")],
    ),
    (
        "paths",
        "///-prefixed engine state below",
        env(volumes=["///var//lib/docker/volumes:/v"]),
        [(f"{E}.volumes[0]", "socket or state")],
    ),
    (
        "paths",
        "workspaceHostPath //var/lib/docker",
        env(workspaceHostPath="//var/lib/docker"),
        [(f"{E}.workspaceHostPath", "socket or state")],
    ),
    (
        "paths",
        "name://workspace",
        env(volumes=["cache://workspace"]),
        [(f"{E}.volumes[0]", "dockyard mounts those")],
    ),
    (
        "paths",
        "name:/config//",
        env(volumes=["cache:/config//"]),
        [(f"{E}.volumes[0]", "dockyard mounts those")],
    ),
    (
        "paths",
        "name:/run//secrets",
        env(volumes=["cache:/run//secrets"]),
        [(f"{E}.volumes[0]", "dockyard mounts those")],
    ),
    (
        "paths",
        "name:// (root)",
        env(volumes=["cache://"]),
        [(f"{E}.volumes[0]", "dockyard mounts those")],
    ),
    (
        "paths",
        "sibling of cwd sharing its prefix",
        env(volumes=[CWD + "-other:/x"]),
        [(f"{E}.volumes[0]", "under the project directory")],
    ),
    (
        "paths",
        "cwd//.. traversal",
        env(volumes=[CWD + "//..//etc:/x"]),
        [(f"{E}.volumes[0]", "without '..'")],
    ),
    (
        "paths",
        "same target spelled twice",
        env(volumes=["cache:/data", "other:/data//"]),
        [(f"{E}.volumes[1]", "mounted once")],
    ),
    (
        "paths",
        "bind root that contains the socket still refuses it",
        {"dockyard:bindRoots": ["/var/run"], **env(volumes=["/var/run/docker.sock:/s"])},
        [(f"{E}.volumes[0]", "socket or state")],
    ),
    (
        "paths",
        "binding / contains the engine state",
        {"dockyard:bindRoots": ["/"], **env(volumes=["/:/host"])},
        [(f"{E}.volumes[0]", "socket or state")],
    ),
]

CRASHES: list[Case] = [
    (
        "crashes",
        "profile as a list",
        {"dockyard:profile": ["large"]},
        [("dockyard:profile", "profile name")],
    ),
    (
        "crashes",
        "profile as a mapping",
        {"dockyard:profile": {"a": 1}},
        [("dockyard:profile", "profile name")],
    ),
    ("crashes", "env profile as a list", env(profile=["x"]), [(f"{E}.profile", "profile name")]),
    ("crashes", "cpus NaN", env(limits={"cpus": math.nan}), [(f"{E}.limits.cpus", "0.01 to 1024")]),
    (
        "crashes",
        "cpus infinity",
        env(limits={"cpus": math.inf}),
        [(f"{E}.limits.cpus", "0.01 to 1024")],
    ),
    (
        "crashes",
        "cpus 400 digits",
        env(limits={"cpus": 10**400}),
        [(f"{E}.limits.cpus", "0.01 to 1024")],
    ),
    ("crashes", "memory NaN", env(limits={"memory": math.nan}), [(f"{E}.limits.memory", "4 TiB")]),
    (
        "crashes",
        "memory -infinity",
        env(limits={"memory": -math.inf}),
        [(f"{E}.limits.memory", "4 TiB")],
    ),
    (
        "crashes",
        "memory 400 digits",
        env(limits={"memory": 10**400}),
        [(f"{E}.limits.memory", "4 TiB")],
    ),
    (
        "crashes",
        "memory 400-digit text",
        env(limits={"memory": "9" * 400 + "g"}),
        [(f"{E}.limits.memory", "4 TiB")],
    ),
    ("crashes", "port 400 digits", env(ports=[10**400]), [(f"{E}.ports[0]", "1-65535")]),
    ("crashes", "port NaN", env(ports=[math.nan]), [(f"{E}.ports[0]", "1-65535")]),
    (
        "crashes",
        "pids 400 digits",
        env(limits={"pids": 10**400}),
        [(f"{E}.limits.pids", "an integer")],
    ),
    (
        "crashes",
        "retries infinity",
        {"dockyard:healthcheck": {"retries": math.inf}},
        [("dockyard:healthcheck.retries", "an integer")],
    ),
    (
        "crashes",
        "YAML date as session id",
        env(sessionId=datetime.date(2026, 1, 1)),
        [(f"{E}.sessionId", "container name")],
    ),
    (
        "crashes",
        "YAML datetime as env value",
        env(env={"WHEN": datetime.datetime(2026, 1, 1, 12, 0)}),
        [(f"{E}.env.WHEN", "one-line string")],
    ),
    (
        "crashes",
        "YAML date as memory",
        env(limits={"memory": datetime.date(2026, 1, 1)}),
        [(f"{E}.limits.memory", "4 TiB")],
    ),
    (
        "crashes",
        "bytes as a label value",
        env(labels={"a": b"x"}),
        [(f"{E}.labels.a", "one-line string")],
    ),
    (
        "crashes",
        "environments a string",
        {"dockyard:environments": "s1"},
        [("dockyard:environments", "a list")],
    ),
    ("crashes", "environment null", {"dockyard:environments": [None]}, [(E, "a mapping")]),
    ("crashes", "environment a list", {"dockyard:environments": [["x"]]}, [(E, "a mapping")]),
    ("crashes", "limits a list", env(limits=[]), [(f"{E}.limits", "a mapping")]),
    (
        "crashes",
        "healthcheck a string",
        {"dockyard:healthcheck": "fast"},
        [("dockyard:healthcheck", "a mapping")],
    ),
    ("crashes", "integer env key", env(env={1: "x"}), [(f"{E}.env.<key 1>", "variable name")]),
    ("crashes", "null label key", env(labels={None: "x"}), [(f"{E}.labels.<key 1>", "label key")]),
    (
        "crashes",
        "egress entry a list",
        env(egress="allowlist", egressAllow=[["a"]]),
        [(f"{E}.egressAllow[0]", "preset")],
    ),
    (
        "crashes",
        "egress entry null",
        env(egress="allowlist", egressAllow=[None]),
        [(f"{E}.egressAllow[0]", "preset")],
    ),
    (
        "crashes",
        "gpu a mapping",
        {"dockyard:profile": "gpu", **env(gpu={"a": 1})},
        [(f"{E}.gpu", "device ids")],
    ),
    (
        "crashes",
        "profiles a list",
        {"dockyard:profiles": ["xl"]},
        [("dockyard:profiles", "a mapping")],
    ),
    (
        "crashes",
        "profile gpu not a bool",
        {"dockyard:profiles": {"xl": {"gpu": "yes"}}},
        [("dockyard:profiles.xl.gpu", "true or false")],
    ),
    (
        "crashes",
        "numeric top-level key",
        {"dockyard:7": ["x"], **env()},
        [("dockyard:<this key>", "unknown key")],
    ),
]

SECRETS: list[Case] = [
    (
        "secrets",
        "env as KEY=value list",
        env(env=[f"OPENAI_API_KEY=sk-{CANARY}"]),
        [(f"{E}.env", "a mapping")],
    ),
    (
        "secrets",
        "env as one string",
        env(env=f"ANTHROPIC_API_KEY=sk-ant-{CANARY}"),
        [(f"{E}.env", "a mapping")],
    ),
    (
        "secrets",
        "env value nested",
        env(env={"APP": {"token": CANARY}}),
        [(f"{E}.env.APP", "one-line")],
    ),
    (
        "secrets",
        "image args as a list",
        {"dockyard:image": {"args": [f"NPM_TOKEN={CANARY}"]}},
        [("dockyard:image.args", "a mapping")],
    ),
    (
        "secrets",
        "image arg value with a newline",
        {"dockyard:image": {"args": {"NPM_TOKEN": f"{CANARY}\n"}}},
        [("dockyard:image.args.NPM_TOKEN", "one-line")],
    ),
    (
        "secrets",
        "gpu image args key with a dash",
        {"dockyard:gpuImage": {"args": {f"x-ghp_{CANARY}": "1"}}},
        [("dockyard:gpuImage.args.<key 1>", "build arg names")],
    ),
    (
        "secrets",
        "a pasted key in secrets",
        env(secrets=[f"sk-ant-api03-{CANARY}"]),
        [(f"{E}.secrets[0]", "variable name")],
    ),
    (
        "secrets",
        "a pasted token in secrets",
        env(secrets=[f"ghp_{CANARY}abcdef"]),
        [(f"{E}.secrets[0]", "is not set")],
    ),
    ("secrets", "secrets as one string", env(secrets=f"sk-{CANARY}"), [(f"{E}.secrets", "a list")]),
    (
        "secrets",
        "label value a pasted key",
        env(labels={"owner": f"sk-{CANARY}\n"}),
        [(f"{E}.labels.owner", "one-line")],
    ),
    (
        "secrets",
        "labels as a list",
        env(labels=[f"token={CANARY}"]),
        [(f"{E}.labels", "a mapping")],
    ),
    (
        "secrets",
        "plain secret at the top",
        {"dockyard:GITHUB_TOKEN": f"ghp_{CANARY}"},
        [("dockyard:GITHUB_TOKEN", "plain config")],
    ),
    (
        "secrets",
        "a token as a top-level key",
        {f"dockyard:ghp_{CANARY}{CANARY}{CANARY}{CANARY}": 1},
        [("dockyard:<this key>", "unknown key")],
    ),
    (
        "secrets",
        "credentials in an egress URL",
        env(egress="allowlist", egressAllow=[f"https://u:{CANARY}@host"]),
        [(f"{E}.egressAllow[0]", "preset")],
    ),
    (
        "secrets",
        "a key pasted as a session id",
        env(sessionId=f"sk-ant-api03-{CANARY}-" + "x" * 60),
        [(f"{E}.sessionId", "container name")],
    ),
    (
        "secrets",
        "a key pasted as an image",
        env(image=f"sk-ant-{CANARY}:Tag With Space"),
        [(f"{E}.image", "image reference")],
    ),
    (
        "secrets",
        "credential-named key anywhere",
        {"dockyard:healthcheck": {"apiKey": CANARY}},
        [("dockyard:healthcheck.apiKey", "unknown key")],
    ),
]

BOUNDS: list[Case] = [
    (
        "bounds",
        "memory overflows int64 bytes",
        env(limits={"memory": 2**63}),
        [(f"{E}.limits.memory", "4 TiB")],
    ),
    (
        "bounds",
        "memory 9000 TiB",
        env(limits={"memory": "9000t"}),
        [(f"{E}.limits.memory", "4 TiB")],
    ),
    (
        "bounds",
        "cpus that round to no quota",
        env(limits={"cpus": 0.001}),
        [(f"{E}.limits.cpus", "0.01")],
    ),
    ("bounds", "cpus 1e-9", env(limits={"cpus": 1e-9}), [(f"{E}.limits.cpus", "0.01")]),
    ("bounds", "cpus 5000", env(limits={"cpus": 5000}), [(f"{E}.limits.cpus", "1024")]),
    (
        "bounds",
        "nofile soft above hard",
        env(limits={"nofileSoft": 4096, "nofileHard": 2048}),
        [(f"{E}.limits.nofileHard", "soft > hard")],
    ),
    (
        "bounds",
        "stack soft above environment hard",
        {"dockyard:limits": {"nofileSoft": 4096}, **env(limits={"nofileHard": 2048})},
        [(f"{E}.limits", "soft > hard")],
    ),
    (
        "bounds",
        "stack soft above default hard",
        {"dockyard:limits": {"nofileSoft": 4096}, **env()},
        [(f"{E}.limits", "soft > hard")],
    ),
    (
        "bounds",
        "nofile above nr_open",
        env(limits={"nofileHard": 2**21}),
        [(f"{E}.limits.nofileHard", "1048576")],
    ),
    (
        "bounds",
        "pids above pid_max",
        env(limits={"pids": 5_000_000}),
        [(f"{E}.limits.pids", "4194304")],
    ),
    (
        "bounds",
        "dockerHost tcp port 70000",
        {"dockyard:dockerHost": "tcp://h:70000"},
        [("dockyard:dockerHost", "1-65535")],
    ),
    (
        "bounds",
        "dockerHost ssh port 0",
        {"dockyard:dockerHost": "ssh://u@h:0"},
        [("dockyard:dockerHost", "1-65535")],
    ),
    (
        "bounds",
        "dockerHost 300-char host",
        {"dockyard:dockerHost": "tcp://" + "a" * 300 + ":1"},
        [("dockyard:dockerHost", "URL")],
    ),
    (
        "bounds",
        "interval 25h",
        {"dockyard:healthcheck": {"interval": "25h"}},
        [("dockyard:healthcheck.interval", "24h")],
    ),
    (
        "bounds",
        "timeout 0ms",
        {"dockyard:healthcheck": {"timeout": "0ms"}},
        [("dockyard:healthcheck.timeout", "1ms")],
    ),
    (
        "bounds",
        "retries 101",
        {"dockyard:healthcheck": {"retries": 101}},
        [("dockyard:healthcheck.retries", "1-100")],
    ),
    ("bounds", "env value 4097", env(env={"A": "x" * 4097}), [(f"{E}.env.A", "4096")]),
    ("bounds", "label value 10k", env(labels={"a": "x" * 10_000}), [(f"{E}.labels.a", "4096")]),
    (
        "bounds",
        "volume spec 5000",
        env(volumes=["/" + "a" * 5000 + ":/x"]),
        [(f"{E}.volumes[0]", "host:container")],
    ),
    ("bounds", "200 ports", env(ports=list(range(1, 201))), [(f"{E}.ports", "at most 128")]),
    (
        "bounds",
        "300 egress entries",
        env(egress="allowlist", egressAllow=[f"h{i}.example.com" for i in range(300)]),
        [(f"{E}.egressAllow", "at most 256")],
    ),
    (
        "bounds",
        "1025 environments",
        {"dockyard:environments": [{"sessionId": f"s{i}"} for i in range(1025)]},
        [("dockyard:environments", "at most 1024")],
    ),
    ("bounds", "env name 300 chars", env(env={"A" * 300: "x"}), [(f"{E}.env.<key 1>", "255")]),
    (
        "bounds",
        "volume name of one character",
        env(volumes=["a:/data"]),
        [(f"{E}.volumes[0]", "2-128")],
    ),
]

IMAGES: list[Case] = [
    (
        "image",
        "shell in the image",
        env(image="ubuntu; rm -rf /"),
        [(f"{E}.image", "image reference")],
    ),
    ("image", "upper-case repository", env(image="Acme/Core"), [(f"{E}.image", "image reference")]),
    ("image", "600 characters", env(image="a" * 600), [(f"{E}.image", "image reference")]),
    (
        "image",
        "tag with a space",
        env(image="ghcr.io/acme/x:my tag"),
        [(f"{E}.image", "image reference")],
    ),
    (
        "image",
        "short digest",
        env(image="ghcr.io/acme/x@sha256:abc"),
        [(f"{E}.image", "image reference")],
    ),
    ("image", "a mapping", env(image={"ref": "x"}), [(f"{E}.image", "image reference")]),
    ("image", "leading dash", env(image="-x"), [(f"{E}.image", "image reference")]),
    ("image", "double slash", env(image="ghcr.io//x"), [(f"{E}.image", "image reference")]),
    (
        "image",
        "stack tag with slash",
        {"dockyard:image": {"tag": "a/b"}},
        [("dockyard:image.tag", "tag prefix")],
    ),
]

WORDING: list[Case] = [
    (
        "wording",
        "pids as text",
        env(limits={"pids": "12"}),
        [(f"{E}.limits.pids", "an integer 1-4194304")],
    ),
    ("wording", "port as text", env(ports=["abc"]), [(f"{E}.ports[0]", "1-65535")]),
    (
        "wording",
        "retries as text",
        {"dockyard:healthcheck": {"retries": "3"}},
        [("dockyard:healthcheck.retries", "an integer")],
    ),
    ("wording", "limits as text", env(limits="big"), [(f"{E}.limits", "a mapping")]),
    (
        "wording",
        "backend a number",
        env(backend=1),
        [(f"{E}.backend", "one of 'claude' or 'codex'")],
    ),
    (
        "wording",
        "egress a bool",
        env(egress=True),
        [(f"{E}.egress", "one of 'open' or 'allowlist'")],
    ),
    (
        "wording",
        "bindRoots a string",
        {"dockyard:bindRoots": "/srv"},
        [("dockyard:bindRoots", "a list")],
    ),
    ("wording", "cwd a number", {"dockyard:cwd": 7}, [("dockyard:cwd", "absolute host directory")]),
]

# credentials: brokered and dockyard:broker, spread over the classes above.
BROKER: list[Case] = [
    (
        "patterns",
        "broker upstream over plain http",
        {"dockyard:broker": {"anthropic": "http://api.anthropic.com"}},
        [("dockyard:broker.anthropic", "an https:// URL")],
    ),
    (
        "patterns",
        "broker upstream with a path, a query, an IPv6 literal, full-width letters",
        {
            "dockyard:broker": {
                "openai": "https://api.openai.com/v1",
                "anthropic": "https://api.anthropic.com?x=1",
                "git": "https://[::1]:443",
            }
        },
        [
            ("dockyard:broker.openai", "no user, path, query"),
            ("dockyard:broker.anthropic", "no user, path, query"),
            ("dockyard:broker.git", "an https:// URL"),
        ],
    ),
    (
        "secrets",
        "broker upstream with user info",
        {"dockyard:broker": {"git": f"https://x-access-token:{CANARY}@github.com"}},
        [("dockyard:broker.git", "an https:// URL")],
    ),
    (
        "secrets",
        "a key pasted as the credentials mode",
        env(credentials=f"sk-ant-api03-{CANARY}"),
        [(f"{E}.credentials", "one of 'files' or 'brokered'")],
    ),
    (
        "paths",
        "broker CA from a device a read would block on",
        {"dockyard:broker": {"caFile": "/dev/stdin"}},
        [("dockyard:broker.caFile", "a regular file")],
    ),
    (
        "paths",
        "broker CA with a parent component",
        {"dockyard:broker": {"caFile": "/etc/ssl/../ssl/certs/ca-certificates.crt"}},
        [("dockyard:broker.caFile", "an absolute file path")],
    ),
    (
        "wording",
        "brokered without any key to hold",
        env(credentials="brokered", secrets=[]),
        [(f"{E}.credentials", "at least one of ANTHROPIC_API_KEY, OPENAI_API_KEY, GITHUB_TOKEN")],
    ),
    (
        "spelling",
        "credential (singular) and broker.ca_file",
        {**env(credential="brokered"), "dockyard:broker": {"ca_file": "/x"}},
        [
            (f"{E}.credential", "did you mean credentials?"),
            ("dockyard:broker.ca_file", "did you mean caFile?"),
        ],
    ),
    (
        "crashes",
        "broker is a list, credentials a number",
        {"dockyard:broker": ["https://x.example"], **env(credentials=1)},
        [("dockyard:broker", "allowed"), (f"{E}.credentials", "one of 'files' or 'brokered'")],
    ),
]

# Plain configuration never carries a credential, and a message never prints one (issue 26).
LEAKS: list[Case] = [
    (
        "leaks",
        "environments a mapping holding a key",
        {"dockyard:environments": {"a": 1, "TOKEN": f"sk-ant-{CANARY}"}},
        [("dockyard:environments", "<a mapping of 2 keys> is not allowed (allowed: a list)")],
    ),
    (
        "leaks",
        "profiles a list holding a key",
        {"dockyard:profiles": [f"ghp_{CANARY}", "x"]},
        [("dockyard:profiles", "<a list of 2 items>")],
    ),
    (
        "leaks",
        "label value a token",
        env(labels={"owner": f"ghp_{CANARY}0000"}),
        [(f"{E}.labels.owner", "no credential in plain configuration (visible in docker inspect)")],
    ),
    (
        "leaks",
        "label key named like a credential",
        env(labels={"com.example.api-token": CANARY}),
        [(f"{E}.labels.com.example.api-token", "no credential-named key in plain configuration")],
    ),
    (
        "leaks",
        "image arg value a token",
        {"dockyard:image": {"args": {"NPM_CONFIG": f"glpat-{CANARY}"}}},
        [("dockyard:image.args.NPM_CONFIG", "(kept in the image's history)")],
    ),
    (
        "leaks",
        "image arg named like a credential",
        {"dockyard:image": {"args": {"NPM_TOKEN": CANARY}}},
        [("dockyard:image.args.NPM_TOKEN", "list NPM_TOKEN under secrets")],
    ),
    (
        "leaks",
        "env value a URL with a password",
        env(env={"APP_URL": f"https://u:{CANARY}@example.com"}),
        [(f"{E}.env.APP_URL", "no credential in plain configuration")],
    ),
    (
        "leaks",
        "env key named like a credential",
        env(env={"API_KEY": CANARY}),
        [(f"{E}.env.API_KEY", "pulumi config set --secret API_KEY <value>")],
    ),
    (
        "leaks",
        "a harmless bad env key is shown",
        env(env={"my-var": "x", f"sk-{CANARY}": "y"}),
        [(f"{E}.env.my-var", "this key is not allowed"), (f"{E}.env.<key 2>", "this key")],
    ),
]

LEAKS += [
    (
        "leaks",
        "an image reference holding a key",
        env(image=f"ghcr.io/x/sk-ant-{CANARY}:1"),
        [(f"{E}.image", "no credential in plain configuration")],
    ),
    (
        "leaks",
        "a docker host with a password",
        {"dockyard:dockerHost": f"tcp://u:{CANARY}@host.example:2376"},
        [("dockyard:dockerHost", "<a string of")],
    ),
]

BAD: list[Case] = [
    *SPELLING, *PATTERNS, *PATHS, *CRASHES, *SECRETS, *BOUNDS, *IMAGES, *WORDING, *BROKER, *LEAKS
]  # fmt: skip


def _parse(raw: dict[str, Any]) -> StackConfig:
    return parse(raw, stack="dev", cwd=CWD, secret_keys=set())


def test_each_class_has_its_own_cases() -> None:
    sizes = {name: sum(1 for case in BAD if case[0] == name) for name, *_ in BAD}
    assert all(size >= 8 for size in sizes.values()), sizes
    assert len(sizes) == 9


@pytest.mark.parametrize(
    ("raw", "expected"), [c[2:] for c in BAD], ids=[f"{c[0]}: {c[1]}" for c in BAD]
)
def test_hostile_config_is_refused_cleanly(
    raw: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(raw)
    problems = info.value.problems
    message = str(info.value)
    for key, fragment in expected:
        lines = [p for p in problems if p.startswith(key + ": ")]
        assert lines, f"no problem at {key}: {problems}"
        assert any(fragment in line for line in lines), f"{key}: {fragment!r} not in {lines}"
    for line in problems:
        assert line.startswith("dockyard:"), line
        assert "(allowed: " in line, line
        assert not PYTHON_WORDING.search(line), line
        assert line.isprintable(), line
    assert CANARY not in message


def test_problems_name_every_key_once_and_in_order() -> None:
    raw = {"dockyard:profile": ["x"], **env(ports=[0, 0], limits={"cpus": math.nan})}
    with pytest.raises(ConfigError) as info:
        _parse(raw)
    keys = [p.split(": ", 1)[0] for p in info.value.problems]
    assert keys == sorted(set(keys), key=keys.index)


# --- What must stay accepted ----------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any]]] = [
    (
        "healthcheck 500ms (documented)",
        {"dockyard:healthcheck": {"interval": "500ms", "startInterval": "500ms"}},
    ),
    ("memory forms", env(limits={"memory": "1.5g", "cpus": "0.5"})),
    ("memory 4 TiB", env(limits={"memory": "4t"})),
    ("cpus 0.01", env(limits={"cpus": 0.01})),
    ("nofile soft == hard", env(limits={"nofileSoft": 4096, "nofileHard": 4096})),
    (
        "stack soft with env hard above",
        {"dockyard:limits": {"nofileSoft": 4096}, **env(limits={"nofileHard": 8192})},
    ),
    (
        "image with registry port and digest",
        env(image="registry.local:5000/team/core:1.2@sha256:" + "a" * 64),
    ),
    ("image plain name", env(image="ubuntu")),
    (
        "volumes below reserved paths",
        env(volumes=["cache:/workspace/.cache", CWD + "/ref:/ref:ro"]),
    ),
    ("named volume", env(volumes=["npm-cache:/home/agent/.npm"])),
    (
        "egress presets and ports",
        env(egress="allowlist", egressAllow=["github", "10.0.0.0/8:5432"]),
    ),
    (
        "labels and env",
        env(labels={"team": "platform", "owner": "a\tb"}, env={"APP_MODE": "dev", "N": 3}),
    ),
    ("ssh docker host with port", {"dockyard:dockerHost": "ssh://agent@host.example:2222"}),
    ("tcp docker host IPv6", {"dockyard:dockerHost": "tcp://[::1]:2376"}),
    ("unix docker host", {"dockyard:dockerHost": "unix:///var/run/docker.sock"}),
    (
        "own profile with gpu",
        {
            "dockyard:profiles": {"xl": {"cpus": 8, "memory": "32g", "gpu": True}},
            **env(profile="xl", gpu=[0, 1]),
        },
    ),
    ("manifestDir absolute", {"dockyard:manifestDir": "/srv/dockyard/manifests"}),
    ("session id of one character", env(sessionId="a")),
]


@pytest.mark.parametrize(("raw"), [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_documented_values_are_accepted(raw: dict[str, Any]) -> None:
    _parse(raw)


def test_paths_are_stored_normalised() -> None:
    cfg = _parse(
        {"dockyard:bindRoots": ["/srv//data/"], **env(volumes=["/srv/data//x/:/data//y/:ro"])}
    )
    assert cfg.bind_roots == ["/srv/data"]
    volume = cfg.environments[0].volumes[0]
    assert (volume.source, volume.target, volume.read_only) == ("/srv/data/x", "/data/y", True)


def test_a_symlink_to_the_engine_socket_is_refused_on_a_local_engine(tmp_path: Path) -> None:
    (tmp_path / "sock").symlink_to("/var/run/docker.sock")
    raw = env(volumes=[f"{tmp_path}/sock:/s"])
    with pytest.raises(ConfigError) as info:
        parse(raw, stack="dev", cwd=str(tmp_path))
    assert "through a symlink" in info.value.problems[0]


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("stacks/Pulumi.*.yaml")))
def test_shipped_stacks_are_valid(path: Path) -> None:
    raw, secret_keys = from_stack_file(str(path))
    parse(raw, stack=path.stem, cwd=CWD, secret_keys=secret_keys, check_secrets=False)
