"""Collection's last checks, made deterministic: what changes between the plan and the take."""

from __future__ import annotations

import os

from helpers import tar_gz
from test_collect import collector

from bucketdav.store.collect import Collector

NOW = {"BUCKETDAV_GC_UNREFERENCED_DAYS": "0"}


def test_blob_marked_used_after_the_plan_is_kept(make_client, store_root, monkeypatch):
    # An upload that deduplicates onto the blob marks it used (its change time moves) after
    # the collector planned to take it: the check under the lock must see that and keep it.
    blob = store_root / make_client().put("/upload/a.txt", b"used again").json["path"]["blob"]
    real_take = Collector._take

    def marked_first(self, item, *args, **kwargs):
        os.chmod(blob, 0o444)  # what holds.touch() does: the change time moves
        return real_take(self, item, *args, **kwargs)

    monkeypatch.setattr(Collector, "_take", marked_first)
    report = collector(store_root, **NOW).run()
    assert (report.blobs, report.skipped) == (0, 1)
    assert blob.read_bytes() == b"used again"


def test_archive_blob_waits_for_its_tree_that_could_not_be_taken(
    make_client, store_root, monkeypatch
):
    answer = make_client().put("/upload/build.tgz", tar_gz({"a": b"tree file"})).json
    real_take = Collector._take

    def trees_held(self, item, *args, **kwargs):
        return None if item.kind == "tree" else real_take(self, item, *args, **kwargs)

    monkeypatch.setattr(Collector, "_take", trees_held)
    report = collector(store_root, later=1, **NOW).run()
    assert report.trees == 0
    tree = store_root / answer["path"]["archive"]
    assert (tree / "a").read_bytes() == b"tree file"
    # The tree stays: so do the tar it was extracted from and the .tgz that tar came from.
    assert (store_root / answer["path"]["decompressed"]).exists()
    assert (store_root / answer["path"]["blob"]).exists()
