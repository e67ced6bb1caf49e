"""Access control without HTTP: the access file, the one decision, credentials, lock-out."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
from datetime import UTC, datetime

import bcrypt
import pytest

from bucketdav.access import commands
from bucketdav.access.credentials import Verifier, parse_authorization, verify_password
from bucketdav.access.decide import Decision, decide, may_read, may_upload, on_the_way
from bucketdav.access.lockout import Lockout
from bucketdav.access.rules import AccessFileError, parse_rules
from bucketdav.access.tls import exposure_warnings, is_loopback
from bucketdav.pages import recipes
from tests.conftest import make_settings

# `htpasswd -nbB alice 'correct horse'` (apache2-utils 2.4), pasted as it printed it.
HTPASSWD_ALICE = "alice:$2y$05$fpWoRneY7B2GCac2VudOAOq8PdyQMBPTljp8qH..o2/NJJVqGMs6C"
TOKEN = "nightly-token-0123456789"  # noqa: S105 - a test token
TOKEN_HASH = hashlib.sha256(TOKEN.encode()).hexdigest()
BOB_HASH = bcrypt.hashpw(b"bob pw", bcrypt.gensalt(4)).decode()
TEAM = f"""
[anonymous]
read = ["/replica/public/"]

[users.alice]
password = "{HTPASSWD_ALICE}"
read = ["/"]
upload = true
metrics = true

[users.bob]
password = "{BOB_HASH}"
read = ["/replica/team/", "/blob/"]

[tokens.nightly]
hash = "sha256:{TOKEN_HASH}"
upload = true
replicas = ["team/nightly/"]

[tokens.old]
hash = "sha256:{"0" * 64}"
upload = true
expires = 2020-01-31
"""


@pytest.fixture(scope="module")
def rules():
    return parse_rules(TEAM)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the decision ---------------------------------------------------------------------------

A, L, U, F = Decision.ALLOW, Decision.LIST, Decision.UNAUTHORIZED, Decision.FORBIDDEN
# (identity, method, path, replicas) -> decision
TABLE = [
    # open to everyone
    ("anonymous", "GET", "/healthz", (), A),
    ("bob", "GET", "/healthz", (), A),
    ("anonymous", "GET", "/static/bucketdav.css", (), A),
    # reading the store
    ("anonymous", "GET", "/replica/public/x.txt", (), A),
    ("anonymous", "PROPFIND", "/replica/public", (), A),
    ("anonymous", "PROPFIND", "/replica/", (), U),
    ("anonymous", "GET", "/replica/", (), L),
    ("anonymous", "PROPFIND", "/", (), U),
    ("anonymous", "GET", "/", (), L),
    ("anonymous", "GET", "/replica/team/a.txt", (), U),
    ("anonymous", "GET", "/blob/ab/cd/abcd", (), U),
    ("anonymous", "OPTIONS", "/explode/", (), U),
    ("bob", "GET", "/replica/team/a.txt", (), A),
    ("bob", "GET", "/replica/teamsecret/a.txt", (), F),
    ("bob", "GET", "/replica/public/x.txt", (), A),
    ("bob", "PROPFIND", "/replica/", (), L),
    ("bob", "GET", "/explode/ab/", (), F),
    ("bob", "GET", "/replica/team/../secret/a.txt", (), F),
    ("nightly", "GET", "/replica/team/nightly/a.txt", (), F),
    ("nightly", "PROPFIND", "/", (), L),
    ("alice", "GET", "/explode/ab/cd/x/y.txt", (), A),
    ("alice", "PROPFIND", "/", (), A),
    # checksums: read on /blob/, or upload
    ("anonymous", "HEAD", "/checksum/" + "0" * 32, (), U),
    ("bob", "GET", "/checksum/" + "0" * 32, (), A),
    ("nightly", "HEAD", "/checksum/" + "0" * 32, (), A),
    # configuration and the Connect page: any right at all
    ("anonymous", "GET", "/config", (), A),
    ("nightly", "GET", "/config", (), A),
    ("anonymous", "GET", "/connect", (), A),
    # metrics
    ("anonymous", "GET", "/metrics", (), U),
    ("bob", "GET", "/metrics", (), F),
    ("alice", "GET", "/metrics", (), A),
    # uploads, the page, deploy by checksum
    ("anonymous", "GET", "/upload", (), U),
    ("bob", "GET", "/upload", (), F),
    ("alice", "GET", "/upload", (), A),
    ("bob", "PUT", "/upload/a.txt", (), F),
    ("alice", "PUT", "/upload/a.txt", ("user/bob/demo",), A),
    ("nightly", "PUT", "/upload/a.txt", (), A),
    ("nightly", "PUT", "/upload/a.txt", ("team/nightly",), A),
    ("nightly", "POST", "/upload", ("team/nightly/arm64",), A),
    ("nightly", "PUT", "/upload/a.txt", ("team/nightly", "team/other"), F),
    ("nightly", "PUT", "/upload/a.txt", ("team/nightlyx",), F),
    ("nightly", "PUT", "/upload/a.txt", ("team",), F),
    ("anonymous", "PUT", "/upload/a.txt", (), U),
]


@pytest.mark.parametrize(("who", "method", "path", "replicas", "expected"), TABLE)
def test_decide_identities_paths_and_methods(rules, who, method, path, replicas, expected):
    assert decide(rules.identity(who), method, path, replicas) is expected


def test_decide_without_any_anonymous_right_asks_for_credentials_everywhere():
    rules = parse_rules(f'[users.a]\npassword = "{BOB_HASH}"\nread = ["/"]\n')
    for path in ("/", "/config", "/connect", "/replica/", "/checksum/00"):
        assert decide(rules.anonymous, "GET", path) is Decision.UNAUTHORIZED
    assert decide(rules.anonymous, "GET", "/healthz") is Decision.ALLOW


def test_decide_prefixes_match_whole_segments_only(rules):
    bob = rules.identity("bob")
    assert may_read(bob, "/replica/team")
    assert may_read(bob, "/replica/team/")
    assert may_read(bob, "//replica//team//x")
    assert not may_read(bob, "/replica/teamx")
    assert not may_read(bob, "/replica/./team/x")
    assert on_the_way(bob, "/replica")
    assert not on_the_way(bob, "/replica/team")
    assert not on_the_way(bob, "/explode")


def test_decide_uploads_need_every_replica_in_scope(rules):
    nightly = rules.identity("nightly")
    assert may_upload(nightly, ["team/nightly", "team/nightly/x"])
    assert not may_upload(nightly, ["team/nightly", "team/nightly2"])
    assert not may_upload(rules.identity("bob"), [])


# -- the access file ------------------------------------------------------------------------


def test_rules_read_a_team_file(rules):
    assert sorted(rules.users) == ["alice", "bob"]
    assert [t.identity.name for t in rules.tokens] == ["nightly", "old"]
    assert rules.identity("nightly").grants[0].replicas == ("team/nightly/",)
    assert rules.identity("alice").grants[0].replicas is None
    assert rules.identity("bob").read == ("/replica/team/", "/blob/", "/replica/public/")
    assert rules.identity("old").expires == datetime(2020, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[anonymous]\nread = ["/"\n', 2, "Unclosed array"),
        ("[anonymous]\nreed = []\n", 2, "unknown key 'reed'"),
        ('\n[users.al]\nread = ["/"]\n', 2, "needs password"),
        ('[users.al]\npassword = "plain"\n', 2, "not a bcrypt"),
        ('[tokens.t]\nhash = "md5:00"\n', 2, "sha256:<64 hex digits>"),
        ('[tokens.t]\nhash = "sha256:' + "0" * 64 + '"\nread = ["x/"]\n', 3, "from the root"),
        ('[tokens.t]\nhash = "sha256:' + "0" * 64 + '"\nread = ["/a/../b/"]\n', 3, "'..'"),
        ('[tokens.t]\nhash = "sha256:' + "0" * 64 + '"\nreplicas = ["/team/"]\n', 3, "relative"),
        ('[tokens.t]\nhash = "sha256:' + "0" * 64 + '"\nupload = "yes"\n', 3, "true or false"),
        ('[tokens.t]\nhash = "sha256:' + "0" * 64 + '"\nexpires = "soon"\n', 3, "a date"),
        ('[users."a:b"]\npassword = "x"\n', 1, "':'"),
        ('[users.anonymous]\npassword = "x"\n', 1, "choose another"),
        ("[admins.x]\n", 1, "unknown table 'admins'"),
    ],
)
def test_rules_errors_name_the_line(text, line, words):
    with pytest.raises(AccessFileError) as caught:
        parse_rules(text)
    assert caught.value.line == line
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"line {line}: ")


def test_rules_a_name_is_a_user_or_a_token_not_both():
    text = f'[users.ci]\npassword = "{BOB_HASH}"\n\n[tokens.ci]\nhash = "sha256:{TOKEN_HASH}"\n'
    with pytest.raises(AccessFileError, match="line 4: 'ci' is both"):
        parse_rules(text)


def test_rules_replica_prefixes_may_be_written_from_the_root():
    text = f'[tokens.t]\nhash = "sha256:{TOKEN_HASH}"\nreplicas = ["/replica/team/", "x"]\n'
    assert parse_rules(text).tokens[0].identity.grants[0].replicas == ("team/", "x/")


# -- credentials ----------------------------------------------------------------------------


def test_credentials_htpasswd_bcrypt_line_verifies(rules):
    stored = rules.users["alice"].password
    assert stored.startswith("$2y$05$")
    assert verify_password(stored, b"correct horse")
    assert not verify_password(stored, b"correct horse!")


def test_credentials_argon2id_verifies():
    lines = commands.password_lines("carol", "pässword", use_argon2=True)
    rules = parse_rules(lines)
    assert rules.users["carol"].password.startswith("$argon2id$")
    assert verify_password(rules.users["carol"].password, "pässword".encode())
    assert not verify_password(rules.users["carol"].password, b"password")


def test_credentials_bcrypt_reads_72_bytes_like_htpasswd():
    stored = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(4)).decode()
    assert verify_password(stored, b"x" * 100)


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (basic("alice", "pw:with:colons"), ("alice", b"pw:with:colons")),
        ("basic " + base64.b64encode(b"caf\xe9:pw").decode(), ("caf\u00e9", b"pw")),
        ("Bearer abc", (None, b"abc")),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"nocolon").decode(), None),
        ("Digest username=x", None),
        ("Bearer ", None),
    ],
)
def test_credentials_parse_basic_and_bearer(header, parsed):
    assert parse_authorization(header) == parsed


class CountingSemaphore:
    """A semaphore that counts how often it was taken: once per password hash."""

    def __init__(self) -> None:
        self.taken = 0

    def __enter__(self) -> None:
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        pass


def verifier(rules, clock=None, now=None):
    hashing = CountingSemaphore()
    made = Verifier(rules, hashing=hashing, clock=clock or (lambda: 0.0), now=now)  # type: ignore[arg-type]
    return made, hashing


def test_credentials_remembered_so_a_drive_costs_one_hash(rules):
    check, hashing = verifier(rules)
    for _ in range(50):
        assert check.check(basic("alice", "correct horse")).identity.name == "alice"
    assert hashing.taken == 1


def test_credentials_forgotten_after_a_while(rules):
    clock = [0.0]
    check, hashing = verifier(rules, clock=lambda: clock[0])
    check.check(basic("bob", "bob pw"))
    clock[0] = 61.0
    check.check(basic("bob", "bob pw"))
    assert hashing.taken == 2


def test_credentials_every_failure_costs_one_hash(rules):
    check, hashing = verifier(rules)
    for header in (
        basic("alice", "wrong"),
        basic("nobody", "wrong"),
        basic("ci", "not-a-token"),
        "Bearer not-a-token",
    ):
        result = check.check(header)
        assert (result.identity, result.failure) == (None, True)
    assert hashing.taken == 4


def test_credentials_a_token_with_any_name_or_as_bearer(rules):
    check, hashing = verifier(rules)
    assert check.check(basic("whoever", TOKEN)).identity.name == "nightly"
    assert check.check(basic("alice", TOKEN)).identity.name == "nightly"
    assert check.check(f"Bearer {TOKEN}").identity.name == "nightly"
    assert hashing.taken == 0


def test_credentials_expired_token_is_refused_also_when_remembered():
    text = f'[tokens.t]\nhash = "sha256:{TOKEN_HASH}"\nupload = true\nexpires = 2030-01-31\n'
    moment = [datetime(2030, 1, 31, 23, 59, tzinfo=UTC)]
    check, _ = verifier(parse_rules(text), now=lambda: moment[0])
    assert check.check(f"Bearer {TOKEN}").identity is not None
    moment[0] = datetime(2030, 2, 1, tzinfo=UTC)
    result = check.check(f"Bearer {TOKEN}")
    assert result.identity is None
    assert result.failure is False
    assert "expired" in result.problem


def test_credentials_too_long_are_refused_without_hashing(rules):
    check, hashing = verifier(rules)
    result = check.check(basic("alice", "x" * 10_000))
    assert (result.identity, result.failure, hashing.taken) == (None, True, 0)


# -- lock-out -------------------------------------------------------------------------------


def test_lockout_after_limit_failures_within_window_for_window():
    clock = [0.0]
    lock = Lockout(3, 600, clock=lambda: clock[0])
    assert [lock.failed("a"), lock.failed("a")] == [False, False]
    clock[0] = 700.0  # the first two are out of the window now
    assert not lock.failed("a")
    assert not lock.failed("a")
    assert lock.locked("a") == 0
    assert lock.failed("a")
    assert lock.locked("a") == 600
    assert lock.locked("b") == 0
    clock[0] = 1300.0
    assert lock.locked("a") == 0


# -- commands -------------------------------------------------------------------------------


def test_commands_token_prints_the_secret_once_and_lines_with_its_hash():
    out, err = io.StringIO(), io.StringIO()
    status = commands.run_token(argparse.Namespace(name="ci-nightly"), stdout=out, stderr=err)
    assert status == 0
    token = err.getvalue().splitlines()[1]
    assert len(token) >= 40
    assert token not in out.getvalue()
    rules = parse_rules(out.getvalue())
    check, _ = verifier(rules)
    assert check.check(f"Bearer {token}").identity.name == "ci-nightly"
    assert rules.tokens[0].identity.grants[0].replicas == ("ci-nightly/",)


def test_commands_passwd_reads_a_piped_password_and_prints_a_bcrypt_line():
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(name="dora", argon2id=False)
    status = commands.run_passwd(args, stdin=io.StringIO("s3cret pw\n"), stdout=out, stderr=err)
    assert status == 0
    assert "s3cret" not in out.getvalue()
    rules = parse_rules(out.getvalue())
    assert rules.users["dora"].password.startswith("$2b$12$")
    assert verify_password(rules.users["dora"].password, b"s3cret pw")


def test_commands_names_that_would_break_the_file_are_refused():
    err = io.StringIO()
    args = argparse.Namespace(name="a:b", argon2id=False)
    assert commands.run_passwd(args, stdin=io.StringIO("x\n"), stdout=io.StringIO(), stderr=err)
    assert "':'" in err.getvalue()
    lines = commands.new_token("odd name.x")[1]
    assert parse_rules(lines).tokens[0].identity.name == "odd name.x"


# -- start-up warnings and the Connect page -------------------------------------------------


def test_exposure_warns_about_an_open_store_and_clear_credentials_on_a_network(tmp_path):
    assert exposure_warnings(make_settings(tmp_path)) == []
    (warning,) = exposure_warnings(make_settings(tmp_path, BUCKETDAV_HOST="0.0.0.0"))
    assert "anyone" in warning
    access = tmp_path / "access.toml"
    (warning,) = exposure_warnings(
        make_settings(tmp_path, BUCKETDAV_HOST="10.1.2.3", BUCKETDAV_ACCESS_FILE=str(access))
    )
    assert "clear text" in warning
    tls = make_settings(
        tmp_path,
        BUCKETDAV_HOST="::",
        BUCKETDAV_ACCESS_FILE=str(access),
        BUCKETDAV_TLS_CERT="c",
        BUCKETDAV_TLS_KEY="k",
    )
    assert exposure_warnings(tls) == []
    assert is_loopback("::1") and is_loopback("127.0.0.2") and not is_loopback("example")


def test_connect_recipes_pass_credentials_with_access_control():
    by_key = {r.key: r for r in recipes("https://files.example", user="alice")}
    rclone = " ".join(by_key["rclone"].commands)
    assert "--webdav-user alice --webdav-pass \"$(rclone obscure 'PASSWORD')\"" in rclone
    davfs2 = by_key["davfs2"].commands
    assert "echo '/mnt/bucket alice PASSWORD' >> /etc/davfs2/secrets" in davfs2
    assert "trust_server_cert" in by_key["davfs2"].note
    assert "--ca-cert" in by_key["rclone"].note
    shown = {r.key: r for r in recipes("http://h:1", user="x'; rm -rf /")}
    assert "--webdav-user USER " in shown["rclone"].commands[1]
    assert "webdav-user" not in " ".join(c for r in recipes("http://h:1") for c in r.commands)


# -- the access file on disk ----------------------------------------------------------------


def test_access_file_read_again_when_changed_and_kept_when_gone_or_broken(tmp_path, caplog):
    from bucketdav.access.middleware import AccessFile

    path = tmp_path / "access.toml"
    path.write_text('[anonymous]\nread = ["/a/"]\n')
    clock = [0.0]
    source = AccessFile(path, clock=lambda: clock[0])
    assert source.current().rules.anonymous.read == ("/a/",)
    path.write_text('[anonymous]\nread = ["/b/"]\n')
    assert source.current().rules.anonymous.read == ("/a/",)  # looked at once a second
    clock[0] = 1.5
    assert source.current().rules.anonymous.read == ("/b/",)
    path.unlink()
    for moment in (3.0, 4.5):
        clock[0] = moment
        assert source.current().rules.anonymous.read == ("/b/",)
    path.write_text("[anonymous\n")
    clock[0] = 6.0
    assert source.current().rules.anonymous.read == ("/b/",)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2
    assert "is gone; the rules before stay" in errors[0]
    assert "line 1: " in errors[1] and "the rules before stay" in errors[1]
