"""R-STK-2: every bad value fails before anything is registered, with one message naming
the key path, the bad value and what is allowed; a stack's problems come together."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.config import ConfigError, Environment, parse

# Every key an environment has, as the message lists them (its own test: the keys
# themselves are documented, docs/stacks.md, tests/unit/test_docs.py).
ENVIRONMENT_KEYS = ", ".join(sorted(f.alias or n for n, f in Environment.model_fields.items()))

E = "dockyard:environments[0]"
EGRESS = (
    "allowed: a preset (anthropic, openai, github, npm, pypi, debian), a domain (covers its "
    "subdomains), or an IPv4 address or CIDR, each optionally with :port (1-65535); IPv6 is "
    "always blocked"
)
PORT = "(allowed: an integer container port 1-65535)"
VOLUME = "(allowed: 'host:container[:ro]' or 'name:container[:ro]' with absolute paths)"
MEMORY = "(allowed: a size from 6 MB to 4 TiB: MB as a number (8192) or with a unit (512m, 8g))"
CPUS = "(allowed: a number of CPUs from 0.01 to 1024, e.g. 4 or 0.5)"
ENV_NAME = (
    "(allowed: an environment variable name: letters, digits, '_', not starting with a digit, "
    "at most 255 characters)"
)
TEXT = "(allowed: a one-line string or number of at most 4096 characters, no control characters)"
SESSION = (
    "(allowed: a container name: letters, digits, '_', '.', '-', starting with a letter "
    "or digit, at most 63 characters)"
)
RESERVED = "(allowed: a container path other than / and /workspace, /config, /checkpoints, /run/secrets (dockyard mounts those))"
ABS_TARGET = "(allowed: an absolute container path without '..' or '.' components)"


def env(**fields: Any) -> dict[str, Any]:
    return {"dockyard:environments": [{"sessionId": "s1", **fields}]}


def secret_hint(name: str) -> str:
    return f"run `pulumi config set --secret {name} <value>`"


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    # --- ports
    ("port zero", env(ports=[0]), [f"{E}.ports[0]: 0 is not allowed {PORT}"]),
    ("port too high", env(ports=[3000, 70000]), [f"{E}.ports[1]: 70000 is not allowed {PORT}"]),
    ("port negative", env(ports=[-1]), [f"{E}.ports[0]: -1 is not allowed {PORT}"]),
    ("port as text", env(ports=["3000"]), [f"{E}.ports[0]: '3000' is not allowed {PORT}"]),
    ("port as bool", env(ports=[True]), [f"{E}.ports[0]: true is not allowed {PORT}"]),
    ("port as float", env(ports=[80.5]), [f"{E}.ports[0]: 80.5 is not allowed {PORT}"]),
    (
        "duplicate port",
        env(ports=[3000, 5173, 3000]),
        [
            f"{E}.ports[2]: 3000 is not allowed (allowed: each container port once; "
            "ports[0] has it already)"
        ],
    ),
    ("ports not a list", env(ports=3000), [f"{E}.ports: 3000 is not allowed (allowed: a list)"]),
    # --- volumes
    (
        "volume without target",
        env(volumes=["/src"]),
        [f"{E}.volumes[0]: '/src' is not allowed {VOLUME}"],
    ),
    (
        "volume empty source",
        env(volumes=[":/data"]),
        [f"{E}.volumes[0]: ':/data' is not allowed {VOLUME}"],
    ),
    (
        "volume too many parts",
        env(volumes=["/a:/b:ro:x"]),
        [f"{E}.volumes[0]: '/a:/b:ro:x' is not allowed {VOLUME}"],
    ),
    (
        "volume bad mode",
        env(volumes=["/a:/b:rx"]),
        [
            f"{E}.volumes[0]: '/a:/b:rx' is not allowed (allowed: 'host:container[:ro]' or "
            "'name:container[:ro]' with absolute paths; the mode is ro or rw)"
        ],
    ),
    (
        "relative host path",
        env(volumes=["src/app:/app"]),
        [
            f"{E}.volumes[0]: 'src/app:/app' is not allowed (allowed: an absolute host path "
            "(starting with /) or a volume name, not a relative path)"
        ],
    ),
    (
        "dot-relative host path",
        env(volumes=["./src:/app"]),
        [
            f"{E}.volumes[0]: './src:/app' is not allowed (allowed: an absolute host path "
            "(starting with /) or a volume name, not a relative path)"
        ],
    ),
    (
        "host path traversal",
        env(volumes=["/home/u/../../etc:/etc-copy"]),
        [
            f"{E}.volumes[0]: '/home/u/../../etc:/etc-copy' is not allowed (allowed: an "
            "absolute host path without '..' or '.' components)"
        ],
    ),
    (
        "relative container path",
        env(volumes=["/src:app"]),
        [f"{E}.volumes[0]: '/src:app' is not allowed {ABS_TARGET}"],
    ),
    (
        "container path traversal",
        env(volumes=["/src:/workspace/../etc"]),
        [f"{E}.volumes[0]: '/src:/workspace/../etc' is not allowed {ABS_TARGET}"],
    ),
    (
        "mount over workspace",
        env(volumes=["/src:/workspace"]),
        [f"{E}.volumes[0]: '/src:/workspace' is not allowed {RESERVED}"],
    ),
    (
        "mount over secrets",
        env(volumes=["/tmp/x:/run/secrets/"]),
        [f"{E}.volumes[0]: '/tmp/x:/run/secrets/' is not allowed {RESERVED}"],
    ),
    (
        "mount over root",
        env(volumes=["/src:/"]),
        [f"{E}.volumes[0]: '/src:/' is not allowed {RESERVED}"],
    ),
    (
        "bad volume name",
        env(volumes=["-cache:/cache"]),
        [
            f"{E}.volumes[0]: '-cache:/cache' is not allowed (allowed: a volume name of 2-128 letters, "
            "digits, '_', '.', '-' (starting alphanumeric))"
        ],
    ),
    (
        "same target twice",
        env(volumes=["/home/u/project/a:/data", "cache:/data/"]),
        [
            f"{E}.volumes[1]: 'cache:/data/' is not allowed (allowed: each container path "
            "mounted once; volumes[0] has it already)"
        ],
    ),
    ("volume not text", env(volumes=[7]), [f"{E}.volumes[0]: 7 is not allowed {VOLUME}"]),
    # --- env
    (
        "env name with digit first",
        env(env={"1ST": "x"}),
        [f"{E}.env.1ST: this key is not allowed {ENV_NAME}"],
    ),
    (
        "env name with dash",
        env(env={"MY-VAR": "x"}),
        [f"{E}.env.MY-VAR: this key is not allowed {ENV_NAME}"],
    ),
    (
        "env name reserved",
        env(env={"DOCKYARD_BACKEND": "codex"}),
        [
            f"{E}.env.DOCKYARD_BACKEND: this key is not allowed (allowed: names outside "
            "DOCKYARD_*, which dockyard sets itself)"
        ],
    ),
    *[
        (
            f"plain secret in env {name}",
            env(env={name: "hunter2-value"}),
            [
                f"{E}.env.{name}: this key is not allowed (allowed: no credential-named key in "
                "plain configuration (visible in docker inspect and to every process); list "
                f"{name} under secrets instead: a secret in this stack's config; "
                f"{secret_hint(name)})"
            ],
        )
        for name in (
            "OPENAI_API_KEY",
            "GITHUB_TOKEN",
            "CLIENT_SECRET",
            "DB_PASSWORD",
            "PASSWORD_FILE",
        )
    ],
    (
        "env value with newline",
        env(env={"GREETING": "a\nb"}),
        [f"{E}.env.GREETING: <a string of 3 characters> is not allowed {TEXT}"],
    ),
    (
        "env value oversized",
        env(env={"BLOB": "x" * 5000}),
        [f"{E}.env.BLOB: <a string of 5000 characters> is not allowed {TEXT}"],
    ),
    (
        "env value a list",
        env(env={"LIST": [1]}),
        [f"{E}.env.LIST: <a list of 1 item> is not allowed {TEXT}"],
    ),
    # --- backend and session ids
    (
        "unknown backend",
        env(backend="gemini"),
        [f"{E}.backend: 'gemini' is not allowed (allowed: one of 'claude' or 'codex')"],
    ),
    (
        "session id with space",
        env(sessionId="my session"),
        [f"{E}.sessionId: 'my session' is not allowed {SESSION}"],
    ),
    (
        "session id traversal",
        env(sessionId="../etc"),
        [f"{E}.sessionId: '../etc' is not allowed {SESSION}"],
    ),
    (
        "session id absolute",
        env(sessionId="/tmp/x"),
        [f"{E}.sessionId: '/tmp/x' is not allowed {SESSION}"],
    ),
    (
        "session id shell",
        env(sessionId="a;rm -rf ~"),
        [f"{E}.sessionId: 'a;rm -rf ~' is not allowed {SESSION}"],
    ),
    (
        "session id too long",
        env(sessionId="a" * 64),
        [f"{E}.sessionId: '{'a' * 64}' is not allowed {SESSION}"],
    ),
    (
        "session id look-alike",
        env(sessionId="dev\u2010one"),
        [f"{E}.sessionId: 'dev\\u2010one' is not allowed {SESSION}"],
    ),
    (
        "session id missing",
        {"dockyard:environments": [{"backend": "claude"}]},
        [f"{E}.sessionId: missing (allowed: a value is required)"],
    ),
    (
        "duplicate session id",
        {"dockyard:environments": [{"sessionId": "s1"}, {"sessionId": "s1"}]},
        [
            "dockyard:environments[1].sessionId: 's1' is not allowed (allowed: a session id not "
            "used by another environment; environments[0] has it)"
        ],
    ),
    # --- limits
    (
        "memory zero",
        env(limits={"memory": 0}),
        [f"{E}.limits.memory: 0 is not allowed {MEMORY}"],
    ),
    (
        "memory negative text",
        env(limits={"memory": "-1g"}),
        [f"{E}.limits.memory: '-1g' is not allowed {MEMORY}"],
    ),
    (
        "memory unparseable",
        env(limits={"memory": "lots"}),
        [f"{E}.limits.memory: 'lots' is not allowed {MEMORY}"],
    ),
    (
        "memory bad unit",
        env(limits={"memory": "8x"}),
        [f"{E}.limits.memory: '8x' is not allowed {MEMORY}"],
    ),
    ("cpus zero", env(limits={"cpus": 0}), [f"{E}.limits.cpus: 0 is not allowed {CPUS}"]),
    ("cpus negative", env(limits={"cpus": -2}), [f"{E}.limits.cpus: -2 is not allowed {CPUS}"]),
    ("cpus text", env(limits={"cpus": "four"}), [f"{E}.limits.cpus: 'four' is not allowed {CPUS}"]),
    (
        "stack cpus",
        {"dockyard:limits": {"cpus": 0}},
        [f"dockyard:limits.cpus: 0 is not allowed {CPUS}"],
    ),
    (
        "pids zero",
        env(limits={"pids": 0}),
        [f"{E}.limits.pids: 0 is not allowed (allowed: an integer 1-4194304)"],
    ),
    (
        "unknown limit",
        env(limits={"swap": "1g"}),
        [
            f"{E}.limits.swap: unknown key (allowed: cpus, disk, memory, nofileHard, nofileSoft, pids)"
        ],
    ),
    # --- gpu and profiles
    (
        "gpu on standard profile",
        env(gpu="all"),
        [
            f"{E}.gpu: 'all' is not allowed (allowed: only on a gpu profile; profile 'standard' "
            "has none — set profile: gpu)"
        ],
    ),
    (
        "gpu bad value",
        {"dockyard:profile": "gpu", **env(gpu="some")},
        [
            f"{E}.gpu: 'some' is not allowed (allowed: 'all' or a list of device ids (e.g. [0, 1] or ['GPU-3a1f...']))"
        ],
    ),
    (
        "unknown profile",
        {"dockyard:profile": "huge", **env()},
        ["dockyard:profile: 'huge' is not allowed (allowed: one of gpu, large, standard)"],
    ),
    # --- secrets
    (
        "secret not set",
        env(secrets=["ANTHROPIC_API_KEY"]),
        [
            f"{E}.secrets[0]: 'ANTHROPIC_API_KEY' is not set (allowed: a secret in this stack's "
            f"config; {secret_hint('ANTHROPIC_API_KEY')})"
        ],
    ),
    (
        "secret as plain config",
        {"dockyard:OPENAI_API_KEY": "sk-plain", **env(secrets=["OPENAI_API_KEY"])},
        [
            "dockyard:OPENAI_API_KEY: <redacted> is stored as plain config (allowed: secrets only; "
            f"{secret_hint('OPENAI_API_KEY')})"
        ],
    ),
    (
        "secret name lower case",
        env(secrets=["my-token"]),
        [f"{E}.secrets[0]: <a string of 8 characters> is not allowed {ENV_NAME}"],
    ),
    # --- labels, top-level keys, hosts
    (
        "reserved label",
        env(labels={"dockyard.session": "x"}),
        [
            f"{E}.labels.dockyard.session: this key is not allowed (allowed: keys "
            "outside dockyard.*, which dockyard sets itself)"
        ],
    ),
    (
        "unknown environment key",
        env(port=[3000]),
        [f"{E}.port: unknown key (allowed: {ENVIRONMENT_KEYS}; did you mean ports?)"],
    ),
    # --- egress
    (
        "egress mode unknown",
        env(egress="closed"),
        [f"{E}.egress: 'closed' is not allowed (allowed: one of 'open' or 'allowlist')"],
    ),
    (
        "egress allow without allowlist",
        env(egressAllow=["github"]),
        [
            f"{E}.egressAllow: <a list of 1 item> is not allowed (allowed: only with egress: allowlist "
            "— an open environment reaches everything)"
        ],
    ),
    *(
        (
            f"egress entry {bad!r}",
            env(egress="allowlist", egressAllow=["github", bad]),
            [f"{E}.egressAllow[1]: {shown} is not allowed ({EGRESS}{extra})"],
        )
        for bad, shown, extra in [
            ("*.example.com", "'*.example.com'", ""),
            ("Example.COM", "'Example.COM'", ""),
            ("example.com:0", "'example.com:0'", ""),
            ("example.com:https", "'example.com:https'", ""),
            ("[2001:db8::1]:443", "'[2001:db8::1]:443'", ""),
            ("2001:db8::/32", "'2001:db8::/32'", ""),
            ("10.0.0.0/33", "'10.0.0.0/33'", ""),
            ("0.0.0.0/0", "'0.0.0.0/0'", "; not 0.0.0.0/0 (that is egress: open)"),
            ("gith\u0443b.com", "'gith\\u0443b.com'", ""),
            ("example.com; curl evil", "'example.com; curl evil'", ""),
            (443, "443", ""),
        ]
    ),
    (
        "docker host scheme",
        {"dockyard:dockerHost": "http://host:2375"},
        [
            "dockyard:dockerHost: 'http://host:2375' is not allowed (allowed: a Docker host URL: "
            "unix:///path, tcp://host:port or ssh://user@host[:port], ports 1-65535)"
        ],
    ),
    (
        "manifest dir traversal",
        {"dockyard:manifestDir": "../../etc"},
        [
            "dockyard:manifestDir: '../../etc' is not allowed (allowed: a directory path "
            "(relative to cwd, or absolute) without '.' or '..' components or control characters)"
        ],
    ),
    (
        "health interval",
        {"dockyard:healthcheck": {"interval": "60"}},
        [
            "dockyard:healthcheck.interval: '60' is not allowed (allowed: a duration from 1ms to 24h such as 500ms, 10s, 1m)"
        ],
    ),
    (
        "image reference",
        {"dockyard:image": {"ref": "GHCR.io/Acme/Core"}},
        [
            "dockyard:image.ref: 'GHCR.io/Acme/Core' is not allowed (allowed: an image reference "
            "such as ghcr.io/acme/dockyard-core:1.2 (lower-case repository path, optional :tag "
            "and @sha256:digest))"
        ],
    ),
]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_reported_with_key_value_and_allowed(
    raw: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(raw, stack="dev", cwd="/home/u/project", secret_keys=set())
    assert info.value.problems == expected
    assert str(info.value).startswith("stack 'dev': the dockyard configuration is invalid")


def test_secret_values_are_never_echoed() -> None:
    raw = {
        "dockyard:GITHUB_TOKEN": "ghp_plainCanary",
        **env(env={"OPENAI_API_KEY": "sk-envCanary"}),
    }
    with pytest.raises(ConfigError) as info:
        parse(raw, stack="dev", cwd="/p")
    assert "Canary" not in str(info.value)


def test_all_problems_of_a_stack_come_together() -> None:
    raw = {
        "dockyard:profle": "large",
        "dockyard:environments": [
            {
                "sessionId": "a",
                "ports": [0, 3000, 3000],
                "backend": "x",
                "volumes": ["rel:/x/../y"],
            },
            {"sessionId": "a", "limits": {"memory": "0m"}, "env": {"9": "v"}},
            {"sessionId": "ok", "gpu": "all"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse(raw, stack="team", cwd="/p")
    keys = [problem.split(": ", 1)[0] for problem in info.value.problems]
    # A bad port does not hide a repeated one (issue 26): ports[0] and ports[2] together.
    assert keys == [
        "dockyard:environments[0].backend",
        "dockyard:environments[0].ports[0]",
        "dockyard:environments[0].ports[2]",
        "dockyard:environments[0].volumes[0]",
        "dockyard:environments[1].env.9",
        "dockyard:environments[1].limits.memory",
        "dockyard:environments[1].sessionId",
        "dockyard:environments[2].gpu",
        "dockyard:profle",
    ]
    assert "(9 problems)" in str(info.value)


@pytest.mark.parametrize(
    ("value", "megabytes"),
    [
        (8192, 8192),
        ("8192", 8192),
        ("8g", 8192),
        ("8G", 8192),
        ("512m", 512),
        ("1.5g", 1536),
        ("8GiB", 8192),
    ],
)
def test_memory_forms_are_accepted(value: object, megabytes: int) -> None:
    cfg = parse(env(limits={"memory": value}), stack="dev", cwd="/p")
    assert cfg.limits_of(cfg.environments[0]).memory == megabytes
