"""Root helpers run only from the operator's ``helperImage`` and see only their own
directories (issue 25 class, issue 29 review): the disk helper (:mod:`dockyard.storage`)
and the snapshot/fork copies (:mod:`dockyard.sessions.snapshots`), with fakes for the
engine. The engine proof is tests/integration/test_helper_image_on_engine.py."""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from dockyard import config, storage, storage_host, storage_scripts
from dockyard.config import ConfigError, from_host_settings, from_request
from dockyard.contract import NAMING_CURRENT
from dockyard.errors import Failed
from dockyard.sessions import snapshots
from dockyard.sessions.registry import Record
from dockyard.sessions.settings import paths
from tests.support.program import ProgramRun, record

REPO = Path(__file__).resolve().parents[2]
OPS = "registry.example.com/ops/helper:7"
TENANT_IMAGE = "evil.example/tenant/agent:1"
HELPER_ID = "sha256:" + "a" * 64
SESSION_IMAGE_ID = "sha256:" + "b" * 64
SNAPSHOT_IMAGE_ID = "sha256:" + "c" * 64
ENV = "dockyard-dev-far"


# --- The setting ------------------------------------------------------------------------------


def test_the_default_is_the_base_image_every_dockyard_image_is_built_from() -> None:
    pinned = dict(
        line.split("=", 1)
        for line in (REPO / "images" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pinned["BASE_IMAGE"] == config.HELPER_IMAGE
    assert from_host_settings({}, stack="s", cwd="/srv").helper_image == pinned["BASE_IMAGE"]
    assert from_host_settings({"helperImage": OPS}, stack="s", cwd="/srv").helper_image == OPS


def test_a_bad_helper_image_is_refused_naming_the_key_and_what_is_allowed() -> None:
    with pytest.raises(ConfigError) as caught:
        from_host_settings({"helperImage": "Bad Image;rm"}, stack="s", cwd="/srv")
    assert "dockyard:helperImage: 'Bad Image;rm' is not allowed (allowed: an image reference" in (
        str(caught.value)
    )


def test_a_request_cannot_choose_the_helper_image() -> None:
    with pytest.raises(ConfigError) as caught:
        from_request({}, {"sessionId": "s1", "helperImage": TENANT_IMAGE}, stack="s", cwd="/srv")
    assert "helperImage: unknown key" in str(caught.value)


# --- The disk helper, as the program declares it -------------------------------------------------


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    values = {
        "helperImage": OPS,
        "environments": [{"sessionId": "far", "image": TENANT_IMAGE}],
    }
    return record(values, {})


def _binds(text: str) -> list[str]:
    argv = shlex.split(text[text.index("docker run") :])
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]


def _commands(run: ProgramRun) -> dict[str, str]:
    disks = run.named("env-far-disk-mounts").inputs  # make + mount; unmount + remove
    return {"create": disks["create"], "delete": disks["delete"]}


def test_the_disk_helper_runs_the_operators_image_resolved_never_the_environments(
    run: ProgramRun,
) -> None:
    pulled = [r.inputs.get("name") for r in run.of_type("docker:index/remoteImage:RemoteImage")]
    assert pulled == [TENANT_IMAGE], "the environment itself runs the tenant's image"
    for what, text in _commands(run).items():
        assert TENANT_IMAGE not in text, f"{what} names the environment's image"
        resolve = f"h=$(docker image inspect --format '{{{{.Id}}}}' {OPS} 2>/dev/null) || "
        assert resolve in text, f"{what}: {text[:200]}"
        assert text.index(resolve) < text.index("docker run"), what
        argv = shlex.split(text[text.index("docker run") :])
        entry = argv.index("--entrypoint")
        assert argv[entry + 1 : entry + 3] == ["/bin/sh", "$h"], f"{what} runs {argv[entry + 2]}"
        assert '"$h" -c' in text


def test_the_disks_keeper_binds_the_disk_roots_and_the_engines_volumes_only(
    run: ProgramRun,
) -> None:
    """One keeper serves every environment on the engine: it sees the image and link
    roots and the engine's volumes directory (at the same path, rshared, so what it
    mounts is the host's mount), nothing else of the host but /dev."""
    roots = [
        f"{storage.DISKS_DIR}:{storage.DISKS_DIR}:rw",
        f"{storage.LINKS_DIR}:{storage.LINKS_DIR}:rw",
    ]
    for what, text in _commands(run).items():
        assert _binds(text) == ["/dev:/dev", *roots, "$r:$r:rshared"], what
        # The volumes directory is the engine's answer for this environment's volumes.
        assert "r=${d%/*/_data}" in text, what
        assert "docker info --format '{{.DockerRootDir}}'" in text, what


def test_a_helper_command_refuses_an_image_that_is_no_image_reference() -> None:
    with pytest.raises(Failed, match=r"helperImage: '--privileged' is not allowed \(allowed: an"):
        storage.helper_command("--privileged", storage.CREATE_SCRIPT, "a")


# --- The generated shell, against a fake docker CLI ----------------------------------------------

FAKE_DOCKER = f"""#!/bin/sh
printf '%s' "$*" | tr '\n' ' ' >> "$DOCKER_LOG"; echo >> "$DOCKER_LOG"
if [ "$1 $2" = "image inspect" ]; then
  [ "$5" = "{OPS}" ] && {{ echo {HELPER_ID}; exit 0; }}
  echo "Error: No such image: $5" >&2; exit 1
fi
[ "$1" = ps ] && printf '%s' "$FAKE_USERS"
# The keeper: $FAKE_KEEPER holds its state (running, exited, foreign); none: no keeper.
if [ "$1 $2" = "container inspect" ]; then
  [ -e "$FAKE_KEEPER" ] || {{ echo "Error: No such container: $5" >&2; exit 1; }}
  case $(cat "$FAKE_KEEPER") in
    foreign) echo "c0ffee sha256:{"d" * 64} <no value> running" ;;
    *) echo "k33p3r {HELPER_ID} keeper $(cat "$FAKE_KEEPER")" ;;
  esac
  exit 0
fi
if [ "$1" = exec ]; then  # FAKE_DIES=once: the keeper goes away under the first exec
  if [ "$FAKE_DIES" = once ] && [ ! -e "$FAKE_KEEPER.died" ]; then
    touch "$FAKE_KEEPER.died"; rm -f "$FAKE_KEEPER"; exit 137
  fi
  printf '%s' "$FAKE_SAYS" >&2; echo "dockyard-keeper-done ${{FAKE_STATUS:-0}}" >&2
  exit "${{FAKE_STATUS:-0}}"
fi
if [ "$1 $2" = "run -d" ]; then  # FAKE_START: ok, conflict (another call started it), fail
  case ${{FAKE_START:-ok}} in
    ok) echo running > "$FAKE_KEEPER"; echo 4b1c; exit 0 ;;
    conflict) echo running > "$FAKE_KEEPER"; echo "Conflict. The container name is already in use" >&2; exit 125 ;;
    *) echo "docker: Error response from daemon: no room" >&2; exit 125 ;;
  esac
fi
if [ "$1 $2" = "rm -f" ]; then rm -f "$FAKE_KEEPER"; exit 0; fi
[ "$1" = info ] && {{ echo /var/lib/docker; exit 0; }}
if [ "$1 $2" = "volume inspect" ] && [ -n "$FAKE_DOWN" ]; then
  echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2; exit 1
fi
if [ "$1 $2" = "volume inspect" ]; then  # the ones named in $FAKE_VOLUMES exist
  shift 4; found=0
  for v in "$@"; do
    case " $FAKE_VOLUMES " in
      *" $v "*) echo "$v /var/lib/docker/volumes/$v/_data" ;;
      *) echo "Error response from daemon: get $v: no such volume" >&2; found=1 ;;
    esac
  done
  exit $found
fi
exit 0
"""


def _sh(
    tmp_path: Path, text: str, users: str = "", volumes: str = "", **answers: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``text`` run against the fake docker CLI; ``users``: what its ``ps`` answers;
    ``volumes``: the (space-separated) volumes it holds; ``answers``: FAKE_STATUS and
    FAKE_SAYS (what a script in the keeper ends with and says), FAKE_START (ok,
    conflict, or anything else: a keeper that cannot start), FAKE_DIES (once: the keeper
    goes away under the first exec). The keeper's state is the file ``keeper-up`` in
    ``tmp_path`` (it stays up across calls there)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    pause = bin_dir / "sleep"  # the keeper's retries wait for nothing here
    pause.write_text("#!/bin/sh\nexit 0\n")
    pause.chmod(0o755)
    log = tmp_path / "docker.log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DOCKER_LOG": str(log),
        "FAKE_USERS": users,
        "FAKE_VOLUMES": volumes,
        "FAKE_KEEPER": str(tmp_path / "keeper-up"),
        **{f"FAKE_{key.upper()}": value for key, value in answers.items()},
    }
    done = subprocess.run(
        ["sh", "-c", text], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return done, log.read_text().splitlines()


def test_the_helper_runs_the_image_id_the_engine_resolves(tmp_path: Path) -> None:
    text = storage.helper_command(OPS, "true", binds=[("/var/lib/dockyard/disks/x", "rw")])
    done, calls = _sh(tmp_path, text)
    assert done.returncode == 0, done.stderr
    runs = [c for c in calls if c.startswith("run ")]
    assert len(runs) == 1, calls
    assert f" {HELPER_ID} -c true disks" in runs[0], calls


def _calls(calls: list[str], verb: str) -> list[str]:
    return [c for c in calls if c.startswith(f"{verb} ")]


def _verbs(calls: list[str]) -> list[str]:
    """The keeper-related calls, in order: inspect (of the keeper), run, exec, rm."""
    wanted = {"container": "inspect", "run": "run", "exec": "exec", "rm": "rm"}
    return [wanted[c.split()[0]] for c in calls if c.split()[0] in wanted]


def test_the_disks_take_one_exec_in_the_keeper_each_way(run: ProgramRun, tmp_path: Path) -> None:
    """Issue 29: making+mounting and unmounting+removing are one exec each in the keeper
    (a helper container each way made an environment's teardown 3x a bare container's);
    the first call finds no keeper and starts it."""
    held = " ".join(f"{ENV}-{role}" for role in (*storage.DISK_ROLES, storage.secrets_role([])))
    create, delete = _commands(run)["create"], _commands(run)["delete"]
    done, calls = _sh(tmp_path, create, volumes=held)
    assert done.returncode == 0, done.stderr
    assert _verbs(calls) == ["inspect", "run", "inspect", "exec"], calls
    assert done.stderr == ""  # neither the mark nor a first try's words
    for text in (create, delete):  # the keeper is up: one look and one exec
        done, calls = _sh(tmp_path, text, volumes=held)
        assert done.returncode == 0, done.stderr
        assert _verbs(calls) == ["inspect", "exec"], calls
    # By its ID, as read (never the name, which anything could hold by then).
    assert _calls(calls, "exec")[0].startswith("exec k33p3r /bin/sh -c "), calls
    assert "mkfs.ext4" in create
    assert "mount -t ext4" in create
    assert "umount -l" in delete
    assert "losetup -d" in delete
    assert "rm -rf" in delete
    assert delete.index("umount -l") < delete.index("losetup -d")


def _one_volume(
    tmp_path: Path, **answers: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    text = storage.keeper_command(OPS, "true", volumes={"workspace": "e1-workspace"})
    return _sh(tmp_path, text, volumes="e1-workspace", **answers)


def test_a_failure_in_the_keeper_is_the_scripts_own_words_and_status(tmp_path: Path) -> None:
    # Its last line without a newline of its own: the mark still ends it.
    done, calls = _one_volume(tmp_path, status="3", says="dockyard: /x is not empty\nno newline")
    assert done.returncode == 3
    assert done.stderr == "dockyard: /x is not empty\nno newline\n"
    assert _verbs(calls) == ["inspect", "run", "inspect", "exec"], calls
    # Killed inside (e.g. mkfs out of memory): still the script's answer, not a retry.
    done, calls = _one_volume(tmp_path, status="137")
    assert done.returncode == 137
    assert _verbs(calls) == ["inspect", "exec"], calls


def test_a_call_whose_keeper_went_away_runs_again_in_a_new_one(tmp_path: Path) -> None:
    (tmp_path / "keeper-up").write_text("running\n")
    done, calls = _one_volume(tmp_path, dies="once")
    assert done.returncode == 0, done.stderr
    assert _verbs(calls) == ["inspect", "exec", "inspect", "run", "inspect", "exec"], calls
    assert done.stderr == ""


def test_calls_at_once_use_the_keeper_another_started(tmp_path: Path) -> None:
    done, calls = _one_volume(tmp_path, start="conflict")
    assert done.returncode == 0, done.stderr
    assert _verbs(calls) == ["inspect", "run", "inspect", "exec"], calls
    assert done.stderr == ""


def test_a_stopped_keeper_that_stays_is_removed_and_replaced(tmp_path: Path) -> None:
    (tmp_path / "keeper-up").write_text("exited\n")
    done, calls = _one_volume(tmp_path)
    assert done.returncode == 0, done.stderr
    verbs = _verbs(calls)
    assert verbs.count("rm") == 1, calls
    assert _calls(calls, "rm")[0] == "rm -f k33p3r", calls  # by its ID, once it is ours
    assert verbs[verbs.index("rm") :] == ["rm", "inspect", "run", "inspect", "exec"], calls


def test_a_container_that_only_has_the_keepers_name_is_never_used(tmp_path: Path) -> None:
    (tmp_path / "keeper-up").write_text("foreign\n")
    done, calls = _one_volume(tmp_path)
    assert done.returncode == 1
    assert "is not dockyard's disks keeper (its image or label differ): nothing was run" in (
        done.stderr
    )
    assert _verbs(calls) == ["inspect"], calls


def test_a_keeper_that_cannot_start_is_one_clear_failure(tmp_path: Path) -> None:
    done, calls = _one_volume(tmp_path, start="fail")
    assert done.returncode == 1
    assert "no room" in done.stderr  # the engine's words, then what it means
    assert done.stderr.strip().endswith("(the messages above are the last tries)")
    assert len(_calls(calls, "run")) == storage_scripts.KEEPER_ATTEMPTS, calls


def test_the_keepers_name_is_no_environments_and_names_its_spec() -> None:
    text = storage.keeper_command(OPS, "true", volumes={"workspace": "e1-workspace"})
    name = f"k={storage_scripts.KEEPER_NAME}.{storage_scripts.KEEPER_SPEC}.$("
    assert name in text
    assert storage_scripts.KEEPER_NAME == "dockyard.disks"  # environments: dockyard-<...>
    assert "docker container inspect" in text  # never an image or volume of that name


def test_the_disks_are_never_removed_while_a_container_uses_their_volumes(
    run: ProgramRun, tmp_path: Path
) -> None:
    """A replaced command's old delete runs while the environment lives, and anything
    else may hold a volume: then nothing is unmounted or removed, the delete fails
    naming the containers, and a destroy can run it again once they are gone."""
    delete = _commands(run)["delete"]
    done, calls = _sh(tmp_path, delete, users="4f2a0c\n9c1bd7\n")
    assert done.returncode == 1
    assert f"dockyard: the disks of {ENV} are kept: containers still use" in done.stderr
    assert "4f2a0c" in done.stderr
    assert "9c1bd7" in done.stderr
    assert not _calls(calls, "run") + _calls(calls, "exec"), calls
    asked = [c for c in calls if c.startswith("ps ")]
    assert len(asked) == 1, calls
    roles = ("workspace", "config", "checkpoints", "home", storage.secrets_role([]))
    for role in roles:  # every volume of the environment, none of another
        assert f"--filter volume={ENV}-{role}" in asked[0], asked
    assert asked[0].count("--filter volume=") == len(roles), asked
    done, calls = _sh(tmp_path, delete)  # once they are gone: the one exec in the keeper
    assert done.returncode == 0, done.stderr
    assert _verbs(calls) == ["inspect", "run", "inspect", "exec"], calls


def test_the_volumes_directories_are_one_look_up_each_passed_with_its_role(
    tmp_path: Path,
) -> None:
    vols = {"workspace": "e1-workspace", "home": "e1-home", "config": "e1-config"}
    root = "/var/lib/docker/volumes"
    text = storage.keeper_command(OPS, "true", "a", volumes=vols)
    done, calls = _sh(tmp_path, text, volumes="e1-config e1-home e1-workspace e2-home")
    assert done.returncode == 0, done.stderr
    assert len(_calls(calls, "volume inspect")) == 1, calls
    run_ = _calls(calls, "run")[0]
    assert f"-v {root}:{root}:rshared" in run_, run_
    assert f"DOCKYARD_VOLUMES={root} " in run_, run_
    exec_ = _calls(calls, "exec")[-1]
    pairs = " ".join(f"{role} {root}/{name}/_data" for role, name in vols.items())
    assert exec_.endswith(f" disks a {pairs}"), exec_
    assert "e2-home" not in exec_
    # One of them gone: refused (a create), or left out (a destroy's unmount).
    done, calls = _sh(tmp_path, text, volumes="e1-config e1-workspace")
    assert done.returncode != 0
    assert "get e1-home: no such volume" in done.stderr
    assert not _calls(calls, "exec"), calls
    lenient = storage.keeper_command(OPS, "true", volumes=vols, missing_ok=True)
    done, calls = _sh(tmp_path, lenient, volumes="e1-config e1-workspace")
    assert done.returncode == 0, done.stderr
    exec_ = _calls(calls, "exec")[-1]
    assert exec_.endswith(
        f" disks workspace {root}/e1-workspace/_data home  config {root}/e1-config/_data"
    ), exec_
    # Only the engine's "no such volume" means gone: a failed look-up is no licence to
    # remove images that may still be mounted.
    done, calls = _sh(tmp_path, lenient, volumes="e1-config e1-workspace", down="1")
    assert done.returncode == 1
    assert "Cannot connect to the Docker daemon" in done.stderr
    assert not _calls(calls, "exec"), calls
    # All gone: the engine's own root tells where the volumes would be.
    done, calls = _sh(tmp_path, lenient, volumes="")
    assert done.returncode == 0, done.stderr
    assert _calls(calls, "info"), calls


def test_a_missing_helper_image_stops_the_helper_naming_the_key(tmp_path: Path) -> None:
    text = storage.helper_command("ops/absent:1", "true")
    done, calls = _sh(tmp_path, text)
    assert done.returncode == 1
    assert "ERROR: helperImage: 'ops/absent:1' is not an image on this engine (allowed:" in (
        done.stderr
    )
    assert not [c for c in calls if c.startswith("run ")], calls


def test_attach_and_prune_never_borrow_an_environments_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts: list[str] = []
    state = {"Image": SESSION_IMAGE_ID, "Id": "c1", "Name": "/x", "State": {"Running": True},
             "Config": {"Labels": {"dockyard.environment": ENV}}}  # fmt: skip

    def docker_cli(*args: str, timeout: float = 120) -> str:
        del timeout
        if args[:2] == ("volume", "inspect"):
            return '[{"Options": null}]'
        answers = {"ps": "c1\n", "inspect": f"[{_json(state)}]", "volume": f"{ENV}-workspace\n"}
        return answers[args[0]]

    def sh(argv: list[str], **_: Any) -> Any:
        texts.append(argv[-1])
        return SimpleNamespace(stdout="")

    monkeypatch.setattr(storage_host, "_docker", docker_cli)
    monkeypatch.setattr(storage_host.subprocess, "run", sh)
    storage.attach_all()
    storage.prune()
    assert len(texts) == 3, texts  # attach all, mount one environment, prune
    assert all(f" {storage.DEFAULT_HELPER_IMAGE} " in t for t in texts)
    assert not [t for t in texts if SESSION_IMAGE_ID in t]
    assert storage.DEFAULT_HELPER_IMAGE == config.HELPER_IMAGE


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# --- Snapshot and fork copies -------------------------------------------------------------------


class FakeImage:
    def __init__(self, image_id: str, labels: dict[str, str] | None = None) -> None:
        self.id = image_id
        self.labels = labels or {}
        self.tags: list[str] = []

    def reload(self) -> None:
        pass


class FakeClient:
    """An engine holding the operator's helper image (unless ``helper`` is False), the
    session's (hostile) image and whatever snapshot images were committed."""

    def __init__(self, helper: bool = True) -> None:
        self.known: dict[str, FakeImage] = {}
        if helper:
            self.known[OPS] = FakeImage(HELPER_ID)
        self.runs: list[tuple[str, list[str], dict[str, Any]]] = []
        self.images = SimpleNamespace(get=self._get, remove=lambda *a, **k: None)
        self.containers = SimpleNamespace(run=self._run)

    def _get(self, ref: str) -> FakeImage:
        if ref not in self.known:
            raise docker.errors.ImageNotFound(ref)
        return self.known[ref]

    def _run(self, image: str, command: list[str], **kwargs: Any) -> None:
        self.runs.append((image, command, kwargs))

    def close(self) -> None:
        pass


class FakeContainer:
    status = "running"
    image = FakeImage(SESSION_IMAGE_ID)

    def __init__(self, client: FakeClient) -> None:
        self.client = client

    def commit(self, repository: str, tag: str, conf: dict[str, Any], pause: bool) -> FakeImage:
        del pause
        made = FakeImage(SNAPSHOT_IMAGE_ID, dict(conf["Labels"]))
        self.client.known[f"{repository}:{tag}"] = made
        return made


TENANT = "acme"


@pytest.fixture
def home(tmp_path: Path) -> Any:
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"helperImage: {OPS}\n")
    where = paths({"DOCKYARD_STATE_DIR": str(tmp_path / "state"), "DOCKYARD_CONFIG": str(settings)})
    parent = Record(
        session_id="parent", tenant=TENANT, stack_name="acme.parent", cwd=str(tmp_path),
        manifest_path="", host="local", request={"sessionId": "parent", "cwd": str(tmp_path)},
        created_at="", naming=NAMING_CURRENT,
    )  # fmt: skip
    registry = SimpleNamespace(find=lambda *_: parent, all=lambda *_: [parent])
    return SimpleNamespace(where=where, registry=registry, record=parent, created=[])


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, home: Any) -> FakeClient:
    client = FakeClient()

    def plan_of(_sessions: Any, rec: Record) -> Any:
        helper = from_host_settings({"helperImage": OPS}, stack="s", cwd="/srv").helper_image
        return SimpleNamespace(
            config=SimpleNamespace(helper_image=helper), environment_id=rec.environment_id
        )

    monkeypatch.setattr(snapshots, "plan_of", plan_of)
    monkeypatch.setattr(snapshots, "refuse_unsupported", lambda *_: None)
    monkeypatch.setattr(snapshots, "connect", lambda _host: client)
    monkeypatch.setattr(snapshots, "container_of", lambda _rec, c: FakeContainer(c))
    monkeypatch.setattr(snapshots, "_quiesced", lambda *_: contextlib.nullcontext())
    return client


def _copy_run(run: tuple[str, list[str], dict[str, Any]]) -> tuple[str, dict[str, str], list[str]]:
    image, command, kwargs = run
    mounts = {path: spec["mode"] for path, spec in kwargs["volumes"].items()}
    assert all(path == spec["bind"] for path, spec in kwargs["volumes"].items())
    return image, mounts, command[3:]


def test_a_snapshot_copies_with_the_helper_image_and_only_its_two_directories(
    home: Any, engine: FakeClient
) -> None:
    taken = snapshots.take(home, "parent", "snap", TENANT)
    assert taken.name == "snap"
    [run] = engine.runs
    image, mounts, args = _copy_run(run)
    assert image == HELPER_ID, "not the session's image"
    source = storage.disk_dir(home.record.environment_id)
    target = snapshots.snapshot_dir(TENANT, "snap")
    assert mounts == {source: "ro", target: "rw"}
    assert args[:2] == [source, target]
    assert run[2]["network_mode"] == "none"


def test_a_fork_from_a_snapshot_copies_with_the_helper_image_not_the_snapshot(
    home: Any, engine: FakeClient
) -> None:
    snapshots.take(home, "parent", "snap", TENANT)
    engine.runs.clear()
    sessions = SimpleNamespace(**vars(home), create=lambda request, *_: {"sessionId": "kid"})
    assert snapshots.fork(sessions, "parent", "kid", TENANT, snapshot="snap") == {
        "sessionId": "kid"
    }
    [run] = engine.runs
    image, mounts, _ = _copy_run(run)
    assert image == HELPER_ID, "not the snapshot's image (the agent's own layer)"
    kid = Record(**{**vars(home.record), "session_id": "kid"}).environment_id
    assert mounts == {snapshots.snapshot_dir(TENANT, "snap"): "ro", storage.disk_dir(kid): "rw"}


def test_a_failed_fork_removes_its_copies_with_the_helper_binding_one_parent(
    home: Any, engine: FakeClient
) -> None:
    def create(*_: Any) -> Any:
        raise Failed("create failed")

    sessions = SimpleNamespace(**vars(home), create=create)
    with pytest.raises(Failed, match="create failed"):
        snapshots.fork(sessions, "parent", "kid", TENANT)
    copy, cleanup = engine.runs
    assert copy[0] == cleanup[0] == HELPER_ID
    kid = Record(**{**vars(home.record), "session_id": "kid"}).environment_id
    _, mounts, args = _copy_run(cleanup)
    assert mounts == {storage.DISKS_DIR: "rw"}
    assert args == [storage.DISKS_DIR, kid]


def test_removing_a_snapshot_uses_the_host_settings_helper_and_its_namespace_only(
    home: Any, engine: FakeClient
) -> None:
    snapshots.take(home, "parent", "snap", TENANT)
    engine.runs.clear()
    snapshots.remove(home, "snap", TENANT)
    [run] = engine.runs
    image, mounts, args = _copy_run(run)
    assert image == HELPER_ID, "not the snapshot's image"
    space = f"{snapshots.SNAPSHOTS_DIR}/{TENANT}"
    assert mounts == {space: "rw"}
    assert args == [space, "snap"]


def test_no_helper_image_on_the_engine_refuses_naming_the_key_and_runs_nothing(
    home: Any, engine: FakeClient
) -> None:
    del engine.known[OPS]
    with pytest.raises(Failed) as caught:
        snapshots.take(home, "parent", "snap", TENANT)
    assert str(caught.value).startswith(
        f"helperImage: {OPS!r} is not an image on engine local (allowed: an image the engine holds"
    )
    assert engine.runs == []


def test_removal_binds_only_a_directory_under_var_lib_dockyard() -> None:
    assert snapshots.remove_binds("/var/lib/dockyard/snapshots/acme/x") == (
        [("/var/lib/dockyard/snapshots/acme", "rw")],
        "/var/lib/dockyard/snapshots/acme",
        "x",
    )
    for bad in ("/etc/x", "/var/lib/dockyard/", "/"):
        with pytest.raises(ValueError, match="not a directory under /var/lib/dockyard/"):
            snapshots.remove_binds(bad)
