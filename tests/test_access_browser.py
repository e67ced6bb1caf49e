"""The upload page and listings in headless Chromium, signed in with HTTP Basic."""

from __future__ import annotations

import os
from typing import Any

import pytest
from access_setup import ALICE, ALICE_PW, BOB_PW, self_signed, start_team, team_access
from helpers import md5

from tests.conftest import LiveServer

pytestmark = [pytest.mark.client, pytest.mark.slow]

WAIT_MS = 15_000


@pytest.fixture(params=["http", "https"])
def team(request, live_server_factory, tmp_path) -> LiveServer:
    access = tmp_path / "access.toml"
    access.write_text(team_access())
    env = self_signed(tmp_path / "tls").env() if request.param == "https" else {}
    return start_team(live_server_factory, access, **env)


def signed_in(browser: Any, user: str, password: str) -> Any:
    """A page whose browser answers the Basic prompt with `user` and `password`."""
    context = browser.new_context(
        http_credentials={"username": user, "password": password}, ignore_https_errors=True
    )
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    return page


def test_access_browser_upload_page_works_after_the_basic_prompt(browser, team, tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "one.bin").write_bytes(data)
    page = signed_in(browser, "alice", ALICE_PW)
    try:
        opened = page.goto(team.url + "upload")
        assert opened.status == 200
        page.set_input_files("#files", str(tmp_path / "one.bin"))
        page.locator("#uploads li.upload.done, #uploads li.upload.failed").first.wait_for()
        row = page.locator("#uploads li.upload.done")
        assert row.count() == 1
        assert md5(data) in row.inner_text()
        blob = row.locator("dt:text-is('File') + dd a").first.get_attribute("href")
        assert blob.startswith(team.url.rstrip("/") + "/blob/")
        fetched = team.request("GET", blob.removeprefix(team.url.rstrip("/")), headers=ALICE)
        assert fetched.body == data
        assert page.errors == []
    finally:
        page.context.close()
    assert "identity=alice" in team.settled_log()


def test_access_browser_listing_shows_a_signed_in_reader_only_the_way(browser, team):
    page = signed_in(browser, "bob", BOB_PW)
    try:
        assert page.goto(team.url + "replica/team/").status == 200
        names = page.locator("#listing td.name a").all_inner_texts()
        assert names == ["nightly/"]
        page.locator("#listing td.name a").first.click()
        page.wait_for_url("**/replica/team/nightly/")
        assert "build.latest/" in page.locator("#listing").inner_text()
        assert page.goto(team.url + "explode/").status == 403
    finally:
        page.context.close()


def test_access_browser_without_credentials_is_asked_for_them(browser, team):
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    try:
        # A page load would stop at the prompt that nobody answers; the request shows why.
        refused = page.request.get(team.url + "upload")
        assert refused.status == 401
        assert refused.headers["www-authenticate"] == 'Basic realm="bucketdav"'
        public = page.goto(team.url + "replica/public/docs/")
        assert public.status == 200
        assert "hello.latest.txt" in page.locator("#listing").inner_text()
    finally:
        context.close()


def test_access_browser_sign_in_link_brings_the_prompt(browser, team):
    page = signed_in(browser, "bob", BOB_PW)
    try:
        # Nothing asks for credentials here: the browser sees what anyone may.
        assert page.goto(team.url + "replica/").status == 200
        assert page.locator("#listing td.name a").all_inner_texts() == ["public/"]
        page.get_by_role("link", name="Sign in").click()
        page.wait_for_url("**/replica/?sign-in")
        assert page.locator("#listing td.name a").all_inner_texts() == ["public/", "team/"]
        assert page.get_by_role("link", name="Sign in").count() == 0
    finally:
        page.context.close()
